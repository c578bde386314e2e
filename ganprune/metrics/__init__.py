"""Measurements: MACs/params, CPU latency (torch, ONNX Runtime), image quality (FID/KID, PSNR/SSIM)."""
