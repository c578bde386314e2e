"""A bring-your-own CycleGAN-style ResNet generator with its own argument and parameter names (no ngf,
norm, input_nc...), as a third-party project would write it; used by tests/test_gonly.py."""
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width),
                                  nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3),
                                  nn.InstanceNorm2d(width))

    def forward(self, x):
        return x + self.body(x)


class TinyResNetG(nn.Module):
    def __init__(self, channels_in=3, channels_out=3, base=8, depth=2):
        super().__init__()
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(channels_in, base, 7), nn.InstanceNorm2d(base),
                                  nn.ReLU(True))
        self.down = nn.Sequential(nn.Conv2d(base, base * 2, 3, 2, 1), nn.InstanceNorm2d(base * 2), nn.ReLU(True))
        self.trunk = nn.Sequential(*[Block(base * 2) for _ in range(depth)])
        self.up = nn.Sequential(nn.ConvTranspose2d(base * 2, base, 3, 2, 1, output_padding=1),
                                nn.InstanceNorm2d(base), nn.ReLU(True))
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(base, channels_out, 7), nn.Tanh())

    def forward(self, x):
        return self.head(self.up(self.trunk(self.down(self.stem(x)))))
