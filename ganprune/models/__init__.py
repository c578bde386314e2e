"""Networks (reference state-dict names), the arch registry, and safe checkpoint loading."""
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
from ganprune.models.networks import (NLayerDiscriminator, PixelDiscriminator, ResnetGenerator,
                                      UnetGenerator, init_weights)
from ganprune.models.registry import (DISCRIMINATORS, GENERATORS, allow_arch, build, register_discriminator,
                                      register_generator)
from ganprune.models.sizes import check_image_size

__all__ = ["load_generator", "load_discriminator", "save_checkpoint", "build", "allow_arch", "GENERATORS", "DISCRIMINATORS",
           "register_generator", "register_discriminator", "UnetGenerator", "ResnetGenerator",
           "NLayerDiscriminator", "PixelDiscriminator", "init_weights", "check_image_size"]
