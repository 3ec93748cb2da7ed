"""Video data: decoders, frame sampling, transforms, datasets and the loader."""
