"""Stage features and pooled embeddings of any vidkd model, through forward hooks (no edits to the models).

`FeatureTaps(model)(x)` runs the model once and returns `(logits, features, embedding)`:
- `features`: one channels-first grid per stage in `model.stage_names`, shallow to deep: `[B, C, T, H, W]` for a
  video model, `[B, C, H, W]` for an image model. Each stage output is read by the layout the model declares
  for it (`model.stage_layouts`, see LAYOUTS), never guessed from its number of dimensions; a two-pathway
  stage (SlowFast) gives its slow pathway.
- `embedding`: the input of `model.embed_name` (the classifier, or the dropout before it: the embedding is
  taken before dropout), averaged over any position left in it, `[B, D]`.

Hooks keep outputs only during a call of the taps: a plain `model(x)` (an evaluation) keeps nothing, and each
call returns its own outputs (a second pass through the model does not change the first one's). A deep copy
of the model (the EMA: `vidkd.engine.ema.plain_copy`) drops the hooks, which belong to the original.

`probe(model, size)` finds every stage's channels and stride from one dummy forward of a `[1, 3, *size]` input.
"""
import torch
import torch.nn as nn

# layout -> dimensions of the stage output
LAYOUTS = {
    "NCTHW": 5,  # a 3D CNN's map
    "BT_CHW": 4,  # a 2D backbone run on frames (TSM): [B*T, C, H, W]
    "NCHW": 4,  # a 2D CNN's map
    "NHWC": 4,  # channels last (timm's Swin stages)
    "tokens": 3,  # [B, N, D], folded to `model.token_grid`; leading tokens beyond the grid (class token) dropped
}


def to_grid(output, layout, batch, token_grid=None, what="stage output"):
    """A stage output (or input: `what`) of `layout` as a channels-first grid."""
    if output.dim() != LAYOUTS[layout]:
        raise ValueError(f"a {what} of shape {tuple(output.shape)} is not of its declared layout {layout}")
    if layout == "BT_CHW":
        bt, c, h, w = output.shape
        return output.view(batch, bt // batch, c, h, w).transpose(1, 2)
    if layout == "NHWC":
        return output.permute(0, 3, 1, 2)
    if layout == "tokens":
        n = 1
        for side in token_grid:
            n *= side
        return output[:, -n:].transpose(1, 2).reshape(batch, output.shape[-1], *token_grid)
    return output


def from_grid(grid, layout, prefix=None):
    """A channels-first grid `[B, C, H, W]` back in an image stage's `layout` (`to_grid`'s inverse); for tokens,
    `prefix` `[B, P, C]` (a class token) goes in front."""
    if layout == "NHWC":
        return grid.permute(0, 2, 3, 1)
    if layout == "tokens":
        tokens = grid.flatten(2).transpose(1, 2)
        return tokens if prefix is None else torch.cat([prefix, tokens], 1)
    if layout == "NCHW":
        return grid
    raise ValueError(f"layout {layout}: not an image stage's (NCHW, NHWC, tokens)")


def pool_embedding(embed_input, module, batch):
    """The embedding module's input as `[B, D]`: channels last for a Linear, dim 1 otherwise (a 1x1x1 conv
    classifier, a dropout before the classifier)."""
    x = embed_input if isinstance(module, nn.Linear) else embed_input.movedim(1, -1)
    return x.reshape(batch, -1, x.shape[-1]).mean(1)


class FeatureTaps:
    def __init__(self, model):
        self.model, self._saved, self._active = model, {}, False
        self._hooks = [model.get_submodule(name).register_forward_hook(self._keep(name))
                       for name in model.stage_names]
        self._hooks.append(model.embed_module().register_forward_pre_hook(self._keep_embed_input))

    def _keep_embed_input(self, module, args):
        if self._active:
            self._saved["embed"] = args[0]

    def _keep(self, name):
        def hook(module, args, output):
            if self._active:
                # A two-pathway stage returns a list that later modules overwrite in place: keep its slow pathway.
                self._saved[name] = output[0] if isinstance(output, (list, tuple)) else output

        return hook

    def __call__(self, x):
        self._saved.clear()
        self._active = True
        try:
            logits = self.model(x)
        finally:
            self._active = False
        batch, grid, model = x.shape[0], self.model.token_grid, self.model
        features = [to_grid(self._saved[name], layout, batch, grid)
                    for name, layout in zip(model.stage_names, model.layouts())]
        embedding = pool_embedding(self._saved["embed"], model.embed_module(), batch)
        self._saved.clear()
        return logits, features, embedding

    def remove(self):
        for hook in self._hooks:
            hook.remove()


@torch.no_grad()
def probe(model, size):
    """`{"stages": [{"name", "channels", "grid", "stride", "input"}], "embed_dim"}` from one dummy forward of a
    `[1, 3, *size]` input (`size`: (T, H, W) for a video model, (H, W) for an image model); `input`: the shape
    `(C, *grid)` of the stage's input, read by the stage's layout (a two-pathway stage's slow pathway)."""
    was_training = model.training
    model.eval()
    taps, inputs = FeatureTaps(model), {}

    def keep_input(name, layout):
        def hook(module, args):
            x = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
            inputs[name] = tuple(to_grid(x, layout, 1, model.token_grid, f"{name}'s input").shape[1:])

        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(keep_input(name, layout))
             for name, layout in zip(model.stage_names, model.layouts())]
    try:
        device = next(model.parameters()).device
        _, features, embedding = taps(torch.zeros(1, 3, *size, device=device))
    finally:
        taps.remove()
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    stages = [{"name": name, "channels": f.shape[1], "grid": tuple(f.shape[2:]),
               "stride": tuple(round(s / n) for s, n in zip(size, f.shape[2:])), "input": inputs[name]}
              for name, f in zip(model.stage_names, features)]
    return {"stages": stages, "embed_dim": embedding.shape[1]}
