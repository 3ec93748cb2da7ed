"""PAT: perspective-aware teaching (METHODS.md section 3; paper 001), for image models of any family.

`L = CE + alpha * T^2 KL(p_t || p_s) + beta * sum_i HCL(A_i(RAA(F_S))_i, F_T'_i) + gamma * T^2 KL(p_t || p_t')`,
alpha = DISTILL.LOGIT_WEIGHT, beta = DISTILL.FEATURE_WEIGHT, gamma = DISTILL.PAT_REG_WEIGHT (all 1); `z_t`, the
teacher's logits unprompted (cacheable), `z_t'` and `F_T'` from the teacher run with its prompts (live).

- RAA: each student stage map -> patch embedding (a conv of kernel and stride H_i / sqrt(q), then an average to
  sqrt(q) x sqrt(q)) to `q = DISTILL.PAT_TOKENS` tokens of width `d = DISTILL.PAT_DIM` -> all stages concatenated
  -> layer norm -> plus a learned position per token -> multi-head self-attention (DISTILL.PAT_HEADS), with a
  residual -> split back per stage. DISTILL.PAT_RAA false keeps the patch embeddings and aligners without the
  attention (the paper's FitNet-style base).
- Aligner `A_i` to teacher stage i's map as the taps give it (channels first): a map stage (CNN; Swin's NHWC)
  takes the stage's tokens as a sqrt(q) x sqrt(q) map -> bilinear upsampling to the stage's grid -> BN -> 1x1
  conv to its width; a token stage (ViT, DeiT, ResMLP) takes a Linear over the width, then one over the tokens
  (q -> the stage's grid).
- AFP (DISTILL.PAT_AFP, on the stages of DISTILL.PAT_AFP_STAGES): a prompt before each of those teacher stages,
  added by a forward pre-hook on the stage (no edit to the teacher's code; active only during the prompted
  pass): the stage input `x` (its grid; a class token passes unchanged) and the previous step's detached feedback
  `A_i(RAA(F_S))_i - F_T'_i`, resized to x's grid, go through the fusion block (concat -> 1x1 conv -> 5x5 conv ->
  1x1 conv) and the prompt block (grouped 1x1 -> depthwise 5x5 -> 1x1 -> squeeze-excitation -> grouped 1x1);
  the stage gets `x + beta_i * prompt`, `beta_i` a learnable scalar starting at 0, so an untrained AFP leaves the
  teacher exactly as it is. DISTILL.PAT_FEEDBACK false feeds zeros instead of the feedback. The feedback is the
  method's state (saved per rank in every checkpoint, restored on resume). The teacher's weights stay frozen and
  get no gradient; the prompts learn through the HCL and regularisation terms.
The reference code's quirks (positional encoding indexed by batch, class token taken from the end) are not kept.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from vidkd.distill.base import Distiller
from vidkd.distill.blocks import SqueezeExcite
from vidkd.distill.losses import hcl_loss, kd_loss
from vidkd.errors import ConfigError
from vidkd.models.taps import from_grid, probe, to_grid
from vidkd.tasks import input_size

MAP_LAYOUTS = ("NCHW", "NHWC")


def patchify(c_in, side, grid):
    """Conv of kernel and stride grid / side (at least 1), then an average to side x side: `side^2` tokens."""
    k = max(1, min(grid) // side)
    return nn.Sequential(nn.Conv2d(c_in, c_in, k, stride=k), nn.AdaptiveAvgPool2d(side))


class RAA(nn.Module):
    """Region-aware attention over the student's stages: `[B, C_i, H_i, W_i]` each -> `[B, q, d]` each."""

    def __init__(self, stages, tokens, dim, heads, attend=True):
        super().__init__()
        self.side = math.isqrt(tokens)
        self.embed = nn.ModuleList(nn.Sequential(patchify(s["channels"], self.side, s["grid"]),
                                                 nn.Conv2d(s["channels"], dim, 1)) for s in stages)
        self.attend = attend
        if attend:
            self.norm = nn.LayerNorm(dim)
            self.position = nn.Parameter(torch.zeros(1, len(stages) * tokens, dim))  # one per token
            nn.init.trunc_normal_(self.position, std=0.02)
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.weights = None  # the last attention map [B, N, N], averaged over heads (the picture)

    def forward(self, features):
        tokens = [embed(f).flatten(2).transpose(1, 2) for embed, f in zip(self.embed, features)]  # [B, q, d] each
        x = torch.cat(tokens, 1)
        if self.attend:
            h = self.norm(x) + self.position
            attended, weights = self.attention(h, h, h, need_weights=True, average_attn_weights=True)
            self.weights = weights.detach()
            x = x + attended
        return list(x.split(tokens[0].shape[1], 1))


class Aligner(nn.Module):
    """`[B, q, d]` -> teacher stage's channels-first map `[B, C_t, H_t, W_t]`."""

    def __init__(self, tokens, dim, stage, layout):
        super().__init__()
        self.side, self.grid, self.token = math.isqrt(tokens), stage["grid"], layout == "tokens"
        c_t = stage["channels"]
        if self.token:
            self.width = nn.Linear(dim, c_t)  # over the width
            self.positions = nn.Linear(tokens, math.prod(self.grid))  # over the tokens
        else:
            self.map = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, c_t, 1))

    def forward(self, x):
        b = x.shape[0]
        if self.token:
            y = self.positions(self.width(x).transpose(1, 2))  # [B, C_t, N_t]
            return y.reshape(b, -1, *self.grid)
        grid = x.transpose(1, 2).reshape(b, -1, self.side, self.side)
        return self.map(F.interpolate(grid, size=self.grid, mode="bilinear", align_corners=False))


def groups_of(channels):
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class Prompt(nn.Module):
    """AFP's block for one teacher stage of input width `c` and output width `c_out` (the feedback's)."""

    def __init__(self, c, c_out):
        super().__init__()
        g = groups_of(c)
        self.fuse = nn.Sequential(nn.Conv2d(c + c_out, c, 1), nn.Conv2d(c, c, 5, padding=2), nn.Conv2d(c, c, 1))
        self.prompt = nn.Sequential(nn.Conv2d(c, c, 1, groups=g), nn.Conv2d(c, c, 5, padding=2, groups=c),
                                    nn.Conv2d(c, c, 1), SqueezeExcite(c, 2, 4), nn.Conv2d(c, c, 1, groups=g))
        self.beta = nn.Parameter(torch.zeros(1))  # 0: an untrained prompt leaves the teacher as it is (1-D: DeepSpeed
        # broadcasts parameters as bytes, which a 0-D tensor cannot be viewed as)

    def forward(self, x, feedback):
        """`x`: the stage input, in the teacher's precision (fp32); the prompt runs in the training precision."""
        feedback = F.interpolate(feedback.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        prompt = self.prompt(self.fuse(torch.cat([x, feedback.to(x.dtype)], 1).to(self.beta.dtype)))
        return x + (self.beta * prompt).to(x.dtype)  # x + beta * prompt


class PAT(Distiller):
    tasks = ("image",)

    def __init__(self, student, teachers, heads, cfg):
        super().__init__(student, teachers, heads, cfg)
        c, size, teacher = self.cfg, input_size(cfg), self.teachers[0]
        layouts = teacher.layouts()
        if math.isqrt(c.PAT_TOKENS) ** 2 != c.PAT_TOKENS:
            raise ConfigError(f"DISTILL.PAT_TOKENS: {c.PAT_TOKENS} is not a square (tokens per stage: side x side)")
        if c.PAT_DIM % c.PAT_HEADS:
            raise ConfigError(f"DISTILL.PAT_DIM {c.PAT_DIM} must be a multiple of DISTILL.PAT_HEADS {c.PAT_HEADS}")
        if any(layout not in MAP_LAYOUTS + ("tokens",) for layout in layouts):
            raise ConfigError(f"DISTILL.METHOD pat: the teacher's stages are {layouts}; PAT takes image models' "
                              f"maps ({', '.join(MAP_LAYOUTS)}) and tokens (TASK image)")
        s_stages, t_stages = probe(student, size)["stages"], probe(teacher, size)["stages"]
        if len(s_stages) != len(t_stages):
            raise ConfigError(f"DISTILL.METHOD pat: the student has {len(s_stages)} stages, the teacher "
                              f"{len(t_stages)}: RAA aligns stage to stage")
        bad = [i for i in c.PAT_AFP_STAGES if not 0 <= i < len(t_stages)]
        if bad:
            raise ConfigError(f"DISTILL.PAT_AFP_STAGES: {bad} not among the teacher's stages 0..{len(t_stages) - 1}")
        self.raa = RAA(s_stages, c.PAT_TOKENS, c.PAT_DIM, c.PAT_HEADS, attend=c.PAT_RAA)
        self.aligners = nn.ModuleList(Aligner(c.PAT_TOKENS, c.PAT_DIM, s, layout)
                                      for s, layout in zip(t_stages, layouts))
        self.afp_stages = sorted(set(c.PAT_AFP_STAGES)) if c.PAT_AFP else []
        self.prompts = nn.ModuleDict({str(i): Prompt(t_stages[i]["input"][0], t_stages[i]["channels"])
                                      for i in self.afp_stages})
        self.feedback = {}  # stage -> the last step's A_i(RAA(F_S))_i - F_T'_i, detached
        self._prompting = False
        self._hooks = [teacher.get_submodule(teacher.stage_names[i]).register_forward_pre_hook(self._prompt_hook(i))
                       for i in self.afp_stages]

    def _prompt_hook(self, i):
        layout = self.teachers[0].layouts()[i]

        def hook(module, args):
            if not self._prompting:
                return None
            x = args[0]
            grid = to_grid(x, layout, x.shape[0], self.teachers[0].token_grid)
            feedback = self.feedback.get(i)
            if feedback is None or feedback.shape[0] != x.shape[0] or not self.cfg.PAT_FEEDBACK:
                feedback = grid.new_zeros(x.shape[0], self.prompts[str(i)].fuse[0].in_channels - grid.shape[1],
                                          *grid.shape[2:])
            prefix = x[:, : x.shape[1] - grid[0, 0].numel()] if layout == "tokens" else None  # a class token
            return (from_grid(self.prompts[str(i)](grid, feedback), layout, prefix),) + args[1:]

        return hook

    def method_state(self):
        return {str(i): f for i, f in self.feedback.items()}

    def load_method_state(self, state):
        device = self.raa.embed[0][1].weight.device
        self.feedback = {int(i): f.to(device) for i, f in state.items()}

    def teacher_targets(self, x):
        return {"logits": self.run_teacher(0, x)[0]}

    def figures(self, batch):
        """RAA's attention (query token x key token, mean over heads and the batch), stages marked, as the paper
        shows it (`raa_attention.png`)."""
        if not self.raa.attend:
            return {}
        self.raa(self.student_taps(batch["input"])[1])
        weights, q = self.raa.weights.float().mean(0).cpu().numpy(), self.cfg.PAT_TOKENS
        stages = weights.shape[0] // q
        fig = Figure(figsize=(6, 5))
        ax = fig.subplots()
        image = ax.imshow(weights, cmap="viridis")
        for i in range(1, stages):
            ax.axhline(i * q - 0.5, color="white", linewidth=0.8)
            ax.axvline(i * q - 0.5, color="white", linewidth=0.8)
        centres, names = [i * q + (q - 1) / 2 for i in range(stages)], [f"stage {i + 1}" for i in range(stages)]
        ax.set_xticks(centres, names)
        ax.set_yticks(centres, names)
        ax.set(title=f"RAA attention ({len(batch['input'])} test images): query x key token", xlabel="key",
               ylabel="query")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        return {"raa_attention.png": fig}

    def forward(self, batch):
        x, y, c = batch["input"], batch["targets"], self.cfg
        z_s, f_s, _ = self.student_taps(x)
        self._prompting = bool(self.afp_stages)
        try:
            z_p, f_p, _ = self.run_teacher(0, x, learn=bool(self.afp_stages))  # z_t', F_T'
        finally:
            self._prompting = False
        # without prompts the pass above is the teacher's own: its logits are z_t (unless they come from the cache)
        z_t = self.targets(batch)["logits"] if self.afp_stages or self.cached else z_p
        aligned = [a(t).float() for a, t in zip(self.aligners, self.raa(f_s))]
        hcl = sum(hcl_loss(a, f) for a, f in zip(aligned, f_p))  # sum_i HCL(A_i(RAA(F_S))_i, F_T'_i)
        self.feedback = {i: (aligned[i] - f_p[i]).detach() for i in self.afp_stages}
        losses = {"ce": c.CE_WEIGHT * self.ce(z_s, y),
                  "kd": c.LOGIT_WEIGHT * self.per_head(lambda s, t, _: kd_loss(s, t, c.TEMPERATURE), z_s, z_t, y),
                  "hcl": c.FEATURE_WEIGHT * hcl}
        if self.afp_stages:  # T^2 KL(p_t || p_t'): the prompted teacher stays near the teacher
            losses["reg"] = c.PAT_REG_WEIGHT * self.per_head(lambda p, t, _: kd_loss(p, t, c.TEMPERATURE), z_p, z_t, y)
        return z_s, losses
