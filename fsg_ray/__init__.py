"""fsg-ray: few-shot image generation by cross-domain correspondence, distributed on Ray."""
