"""Stage features and pooled embeddings of any vidkd model, through forward hooks (no edits to the models).

`FeatureTaps(model)(x)` runs the model once and returns `(logits, features, embedding)`:
- `features`: one `[B, C, T, H, W]` tensor per stage in `model.stage_names`, shallow to deep. Token stages
  (`[B, N, D]`) are folded to the model's `token_grid` (a class token, if any, dropped); 2D-backbone stages
  (`[B*T, C, H, W]`) are unfolded in time; a two-pathway stage (SlowFast) gives its slow pathway.
- `embedding`: the classifier's input, averaged over any position left in it, `[B, D]`.

`probe(model, num_frames, crop_size)` finds every stage's channels and stride from one dummy forward.
"""
import torch
import torch.nn as nn


def to_grid(output, batch, token_grid=None):
    """A stage output as `[B, C, T, H, W]`."""
    if output.dim() == 5:
        return output
    if output.dim() == 4:  # [B*T, C, H, W]
        bt, c, h, w = output.shape
        return output.view(batch, bt // batch, c, h, w).transpose(1, 2)
    if output.dim() == 3 and token_grid is not None:  # [B, N, D] tokens
        t, h, w = token_grid
        tokens = output[:, -t * h * w :]  # drops a leading class token when there is one
        return tokens.transpose(1, 2).reshape(batch, output.shape[-1], t, h, w)
    raise ValueError(f"cannot fold a stage output of shape {tuple(output.shape)} to [B, C, T, H, W]")


def pool_embedding(head_input, head, batch):
    """The classifier's input as `[B, D]`: channels last for a Linear, dim 1 for a 1x1x1 conv."""
    x = head_input if isinstance(head, nn.Linear) else head_input.movedim(1, -1)
    return x.reshape(batch, -1, x.shape[-1]).mean(1)


class FeatureTaps:
    """The hooks keep outputs only during a call of the taps: a plain `model(x)` (a method that reads no stage
    feature, an evaluation) leaves nothing alive in them."""

    def __init__(self, model):
        self.model, self._saved, self._active = model, {}, False
        self._hooks = [model.get_submodule(name).register_forward_hook(self._keep(name))
                       for name in model.stage_names]
        self._hooks.append(model.head_module().register_forward_pre_hook(self._keep_head_input))

    def _keep_head_input(self, module, args):
        if self._active:
            self._saved["head"] = args[0]

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
        batch = x.shape[0]
        grid = self.model.token_grid
        features = [to_grid(self._saved[name], batch, grid) for name in self.model.stage_names]
        embedding = pool_embedding(self._saved["head"], self.model.head_module(), batch)
        self._saved.clear()
        return logits, features, embedding

    def remove(self):
        for hook in self._hooks:
            hook.remove()


@torch.no_grad()
def probe(model, num_frames, crop_size):
    """`{"stages": [{"name", "channels", "grid": (T, H, W), "stride": (t, h, w)}], "embed_dim"}` from one dummy
    forward."""
    was_training = model.training
    model.eval()
    taps = FeatureTaps(model)
    try:
        device = next(model.parameters()).device
        _, features, embedding = taps(torch.zeros(1, 3, num_frames, crop_size, crop_size, device=device))
    finally:
        taps.remove()
        model.train(was_training)
    size = (num_frames, crop_size, crop_size)
    stages = [{"name": name, "channels": f.shape[1], "grid": tuple(f.shape[2:]),
               "stride": tuple(round(s / n) for s, n in zip(size, f.shape[2:]))}
              for name, f in zip(model.stage_names, features)]
    return {"stages": stages, "embed_dim": embedding.shape[1]}
