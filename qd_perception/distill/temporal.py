"""TempDistiller (papers.md section 4): a camera BEV model trained with a short history (the
student) learns the temporal knowledge of the same model trained with a long one (the teacher).

Frames are ordered **newest first** here, as in the paper: frame 0 is the current keyframe,
frame k the k-th previous one. The teacher sees ``T_t`` frames, the student the newest
``T_s <= T_t`` of them (``T_s = 1``: no history). BEVFormer is recurrent, so "frame k's feature"
is the BEV (and the perspective-view features) the model computes at frame k from its own,
shorter history; the teacher's are computed as ``train bev`` computes a history (eval mode, no
gradients, :func:`qd_perception.train.bev.encode_history_frames`), the student's history frames
likewise and its current frame with gradients.

Terms (each behind a switch, weights in :class:`TemporalDistillConfig`):

1. **Temporal feature regeneration on the BEV** (``bev``). Target: temporal self-attention over the
   teacher's frames, parameter-free scaled dot product per BEV cell, with all ``T_t`` teacher frames
   as queries and values and the first ``T_s`` as keys: for student frame ``i < T_s``,
   ``target_i = sum_j softmax_j(<K_i, Q_j> / sqrt(C)) V_j`` (``j`` over the teacher's frames; the
   keys give the output the student's length, the paper's wording). The student's BEV is masked
   per cell (each cell zeroed with probability ``mask_ratio``), a generator regenerates it and the
   MSE to the target is the loss. Generator: two 1-D convolutions (kernel ``bev_kernel``) with a
   ReLU between, **over the flattened row-major BEV token sequence**, channels = ``embed_dims``. We
   chose the token axis (not the channel axis) so a masked cell is rebuilt from its unmasked
   neighbours along the BEV row, as MGD does with 3x3 convolutions; a kernel of 1 would make a
   masked cell's regeneration a constant.
2. **The same on the perspective view** (``pv``): the last FPN level (B, N_cam, C, h, w), the
   attention per pixel and camera over frames, per-pixel masks, a generator of two 2-D
   convolutions (kernel ``pv_kernel``) with a ReLU between.
3. **Temporal relation distillation** (``relation``, only when ``T_s == T_t``): per BEV cell (our
   BEV queries) the frame-to-frame cosine-similarity matrix (T, T) of teacher and student; each
   row softened with ``softmax(S / temperature)``, KL(teacher || student) (times ``T^2``, as the
   project's other KL terms, :func:`qd_perception.distill.cwd.softmax_kl`).
4. **Decoder features** (``decoder``, only when ``T_s == T_t``): MSE between the last decoder
   layer's query features of teacher and student (captured with forward hooks). It needs learned
   decoder queries: two-stage queries come from each model's own heatmap peaks, so query ``q`` of
   the teacher is not query ``q`` of the student.

Frames a sample does not have (a scene starts inside the teacher's queue) are masked out of the
attention and of every loss. The generators are training-only: the student checkpoint is a plain
BEVFormer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qd_perception.config import ConfigError, load_yaml
from qd_perception.distill.cwd import softmax_kl

#: terms in logging order (:class:`TemporalLosses`)
TERMS: tuple[str, ...] = ("bev", "pv", "relation", "decoder")


@dataclass(frozen=True)
class TemporalDistillConfig:
    """TempDistiller's knobs (YAML: ``config/distill/temporal.yaml``, key ``temporal``).

    total loss = detection + sum over enabled terms of ``<term>_weight * L_<term>``.
    ``teacher_queue_length``: frames the teacher sees (current included; 0 = the queue the
    teacher checkpoint was trained with). The student's is ``train bev --queue-length``.
    ``relation`` and ``decoder`` apply only when the student sees all the teacher's frames; the
    paper turns the regeneration terms off then (``full_frames_regeneration: false``).
    """

    teacher_queue_length: int = 0
    mask_ratio: float = 0.5
    temperature: float = 0.5
    bev: bool = True
    pv: bool = True
    relation: bool = True
    decoder: bool = True
    bev_weight: float = 1.0
    pv_weight: float = 1.0
    relation_weight: float = 1.0
    decoder_weight: float = 1.0
    bev_kernel: int = 3
    pv_kernel: int = 3
    full_frames_regeneration: bool = False

    def __post_init__(self) -> None:
        if self.teacher_queue_length < 0:
            raise ValueError(
                f"teacher_queue_length must be >= 0 (0 = the teacher's), got {self.teacher_queue_length}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for t in TERMS:
            w = getattr(self, f"{t}_weight")
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"{t}_weight must be a finite number >= 0, got {w}")
        for k in ("bev_kernel", "pv_kernel"):
            v = getattr(self, k)
            if v < 1 or v % 2 == 0:
                raise ValueError(f"{k} must be odd and >= 1 (same-size output), got {v}")
        if not any(getattr(self, t) for t in TERMS):
            raise ValueError(f"every term is switched off; enable at least one of {list(TERMS)}")

    def active(self, t_teacher: int, t_student: int) -> dict[str, bool]:
        """Term -> used for these queue lengths (switch on, weight > 0, frame rule of the paper)."""
        full = t_student == t_teacher
        regen = not full or self.full_frames_regeneration
        # frame-to-frame relations need two frames
        rule = {"bev": regen, "pv": regen, "relation": full and t_teacher > 1, "decoder": full}
        return {t: bool(getattr(self, t) and getattr(self, f"{t}_weight") > 0 and rule[t]) for t in TERMS}


def load_temporal_config(path: str | Path) -> TemporalDistillConfig:
    """The ``temporal:`` block of a YAML file (errors name the file and the key)."""
    return load_yaml(TemporalDistillConfig, path, key="temporal")


def teacher_from_checkpoint(
    ckpt: dict, path: str | Path, cfg: TemporalDistillConfig
) -> tuple[nn.Module, int]:
    """The teacher BEVFormer of a checkpoint dict (``models.bevformer.checkpoint.read_checkpoint``
    of ``path``) and the frames it sees: ``cfg.teacher_queue_length``, else the queue it was
    trained with. ConfigError when neither says."""
    from qd_perception.models.bevformer.checkpoint import model_from_checkpoint, trained_queue_length

    queue = cfg.teacher_queue_length or trained_queue_length(ckpt) or 0
    if queue < 1:
        raise ConfigError(f"{path} records no training queue length: set teacher_queue_length")
    return model_from_checkpoint(ckpt, path), queue


# ---- pure tensor functions ----------------------------------------------------------------------
def random_keep_mask(shape: tuple[int, ...], ratio: float, device=None, generator=None) -> torch.Tensor:
    """Float mask of ``shape``: 0 with probability ``ratio`` (masked), else 1 (the paper's
    ``M = 0 if R < ratio``, R uniform in [0, 1))."""
    r = torch.rand(shape, device=device, generator=generator)
    return (r >= ratio).float()


def temporal_attention_target(
    teacher: torch.Tensor, t_student: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """TempDistiller's regeneration target (no gradients: the teacher is frozen).

    teacher: (B, T_t, N, C) per-frame features, newest first, N tokens (BEV cells or pixels);
    valid: (B, T_t) 1.0 where the sample has that frame (frame 0 must be valid).
    Queries and values: all T_t frames; keys: the first ``t_student``. Per token,
    ``out[b, i] = sum_j softmax_j(K_i . Q_j / sqrt(C)) V_j`` with ``K = teacher[:, :t_student]``,
    ``Q = V = teacher`` and missing frames ``j`` excluded. Returns (B, t_student, N, C).
    """
    if teacher.dim() != 4:
        raise ValueError(f"teacher features must be (B, T, N, C), got {tuple(teacher.shape)}")
    T, C = teacher.shape[1], teacher.shape[3]
    if not 1 <= t_student <= T:
        raise ValueError(f"t_student must be in 1..{T}, got {t_student}")
    x = teacher.detach().float()
    k, q, v = x[:, :t_student], x, x
    logits = torch.einsum("bsnc,btnc->bnst", k, q) / math.sqrt(C)  # (B, N, T_s, T_t)
    if valid is not None:
        miss = valid.detach()[:, None, None, :] < 0.5  # (B, 1, 1, T_t)
        logits = logits.masked_fill(miss, float("-inf"))
    w = logits.softmax(dim=-1)
    return torch.einsum("bnst,btnc->bsnc", w, v)


def _masked_mean(per_item: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(per_item * weight) / max(sum(weight), 1): per_item and weight the same shape."""
    return (per_item * weight).sum() / weight.sum().clamp(min=1.0)


def relation_loss(
    teacher: torch.Tensor, student: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Temporal relation distillation. teacher, student (B, T, N, C) newest first -> scalar.

    Per token the (T, T) cosine similarities between frames; row ``i`` softened with
    ``softmax(S_i / temperature)`` over ``j``; KL(teacher || student) times ``temperature^2``,
    averaged over the rows of the valid frames (missing frames ``j`` take no probability)."""
    if teacher.shape != student.shape or teacher.dim() != 4:
        raise ValueError(
            f"need two (B, T, N, C) tensors, got {tuple(teacher.shape)} and {tuple(student.shape)}"
        )
    B, T = teacher.shape[:2]
    if T < 2:
        raise ValueError("relation distillation needs at least two frames")

    def sim(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        return torch.einsum("binc,bjnc->bnij", x, x)  # (B, N, T, T)

    s_t, s_s = sim(teacher.detach()), sim(student)
    if valid is None:
        valid = teacher.new_ones(B, T)
    v = valid.detach().float()
    # a missing frame j: a logit so low its probability is 0 in both (the KL term is then 0 * finite)
    miss = (v < 0.5)[:, None, None, :]
    s_t = s_t.masked_fill(miss, -1e4)
    s_s = s_s.masked_fill(miss, -1e4)
    kl = softmax_kl(s_t, s_s, temperature, dim=-1)  # (B, N, T)
    return _masked_mean(kl, v[:, None, :].expand_as(kl))


class BEVGenerator(nn.Module):
    """Two 1-D convolutions with a ReLU between over the flattened BEV token sequence:
    (M, N_bev, C) -> (M, N_bev, C), channels C in and out, ``kernel`` tokens wide."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        p = kernel // 2
        self.net = nn.Sequential(
            nn.Conv1d(channels, channels, kernel, padding=p), nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, kernel, padding=p),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2)).transpose(1, 2)


class PVGenerator(nn.Module):
    """Two 2-D convolutions with a ReLU between: (M, C, h, w) -> (M, C, h, w)."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        p = kernel // 2
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, kernel, padding=p), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel, padding=p),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---- features of a temporal batch ---------------------------------------------------------------
@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame features of one model on a batch, newest first.

    bev: (B, T, H_bev*W_bev, C); pv: (B, T, N_cam, C, h, w) the last FPN level; valid: (B, T)
    1.0 where the sample has the frame; decoder: (B, Q, C) the last decoder layer's query
    features at the current frame, or None when not captured."""

    bev: torch.Tensor
    pv: torch.Tensor
    valid: torch.Tensor
    decoder: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        return int(self.bev.shape[1])


def last_frames(tb, length: int):
    """The :class:`~qd_perception.train.bev_data.TemporalBatch` of the newest ``length`` frames of
    ``tb`` (current included): what a model trained with ``queue_length = length`` sees."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    keep = min(length - 1, len(tb.history))
    cut = len(tb.history) - keep
    return replace(tb, history=tb.history[cut:], valid=tb.valid[cut:], motion=tb.motion[cut:])


def frame_validity(tb) -> torch.Tensor:
    """(B, T) newest first: 1.0 for the current frame, ``tb.valid`` for the history."""
    cur = torch.ones_like(tb.valid[0]) if tb.valid else torch.ones(len(tb.current.targets))
    return torch.stack([cur, *reversed(tb.valid)], dim=1).to(tb.current.images.device)


def stack_frames(
    history: list, current_bev: torch.Tensor, current_img: list[torch.Tensor], tb, frames: int, decoder=None
) -> FrameFeatures:
    """:class:`FrameFeatures` of ``frames`` frames from the history encodings (oldest first,
    ``BEVEncoding``) and the current frame's BEV (B, N_bev, C) and FPN features (per level
    (B, N_cam, C, h, w)). A batch whose samples all have a shorter history than ``frames - 1``
    is padded with zero features marked missing."""
    bev = [current_bev, *(e.bev for e in reversed(history))]
    pv = [current_img[-1], *(e.img_feats[-1] for e in reversed(history))]
    valid = frame_validity(tb)
    if len(bev) > frames:
        raise ValueError(f"{len(bev)} frames for a queue of {frames}")
    pad = frames - len(bev)
    bev += [torch.zeros_like(current_bev)] * pad
    pv += [torch.zeros_like(pv[0])] * pad
    valid = torch.cat([valid, valid.new_zeros(valid.shape[0], pad)], dim=1)
    return FrameFeatures(torch.stack(bev, dim=1), torch.stack(pv, dim=1), valid, decoder)


class DecoderTap:
    """Forward hook on a BEVFormer's last decoder layer keeping its output (B, Q, C): the query
    features of the last decoder call. Remove with :meth:`close`."""

    def __init__(self, model: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = model.decoder.layers[-1].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.value = output

    def take(self) -> torch.Tensor | None:
        v, self.value = self.value, None
        return v

    def close(self) -> None:
        self._handle.remove()


# ---- the distiller --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemporalLosses:
    """total: the weighted sum (a tensor); the unweighted terms as floats (0.0 when off)."""

    total: torch.Tensor
    bev: float = 0.0
    pv: float = 0.0
    relation: float = 0.0
    decoder: float = 0.0


class TempDistiller(nn.Module):
    """The trainable part of TempDistiller (the generators) and its loss.

    ``t_teacher`` / ``t_student``: frames each model sees (queue lengths, current included).
    ``embed_dims``: BEV and FPN channels (teacher and student alike). Call with the two
    :class:`FrameFeatures`; gradients reach the student's features and the generators only.
    """

    def __init__(self, cfg: TemporalDistillConfig, embed_dims: int, t_teacher: int, t_student: int) -> None:
        super().__init__()
        if not 1 <= t_student <= t_teacher:
            raise ConfigError(f"the student's queue ({t_student}) must be 1..the teacher's ({t_teacher})")
        self.cfg = cfg
        self.t_teacher, self.t_student = t_teacher, t_student
        self.active = cfg.active(t_teacher, t_student)
        if not any(self.active.values()):
            raise ConfigError(
                f"no TempDistiller term applies to teacher queue {t_teacher} / student queue {t_student} "
                f"with switches {dict((t, getattr(cfg, t)) for t in TERMS)}"
            )
        self.bev_generator = BEVGenerator(embed_dims, cfg.bev_kernel) if self.active["bev"] else None
        self.pv_generator = PVGenerator(embed_dims, cfg.pv_kernel) if self.active["pv"] else None

    def regenerate_bev(self, student: torch.Tensor, generator=None) -> torch.Tensor:
        """student (B, T_s, N, C) -> regenerated (B, T_s, N, C) from the masked features."""
        B, T, N, C = student.shape
        keep = random_keep_mask((B, T, N, 1), self.cfg.mask_ratio, student.device, generator)
        return self.bev_generator((student * keep).reshape(B * T, N, C)).reshape(B, T, N, C)

    def regenerate_pv(self, student: torch.Tensor, generator=None) -> torch.Tensor:
        """student (B, T_s, N_cam, C, h, w) -> regenerated, same shape."""
        B, T, Nc, C, h, w = student.shape
        keep = random_keep_mask((B, T, Nc, 1, h, w), self.cfg.mask_ratio, student.device, generator)
        return self.pv_generator((student * keep).reshape(B * T * Nc, C, h, w)).reshape(B, T, Nc, C, h, w)

    def forward(self, teacher: FrameFeatures, student: FrameFeatures, generator=None) -> TemporalLosses:
        if teacher.frames != self.t_teacher or student.frames != self.t_student:
            raise ValueError(
                f"expected {self.t_teacher} teacher and {self.t_student} student frames, "
                f"got {teacher.frames} and {student.frames}"
            )
        c = self.cfg
        T_s = self.t_student
        v_s = student.valid.detach().float()  # (B, T_s): the student's frames are the teacher's newest
        total = student.bev.new_zeros((), dtype=torch.float32)
        terms: dict[str, float] = {}
        if self.active["bev"]:
            target = temporal_attention_target(teacher.bev, T_s, teacher.valid)
            regen = self.regenerate_bev(student.bev.float(), generator)
            per = ((regen - target) ** 2).mean(dim=(2, 3))  # (B, T_s)
            loss = _masked_mean(per, v_s)
            total = total + c.bev_weight * loss
            terms["bev"] = float(loss.detach())
        if self.active["pv"]:
            B, T, Nc, C, h, w = teacher.pv.shape
            tokens = teacher.pv.permute(0, 1, 2, 4, 5, 3).reshape(B, T, Nc * h * w, C)
            target = temporal_attention_target(tokens, T_s, teacher.valid)
            target = target.reshape(B, T_s, Nc, h, w, C).permute(0, 1, 2, 5, 3, 4)
            regen = self.regenerate_pv(student.pv.float(), generator)
            per = ((regen - target) ** 2).mean(dim=(2, 3, 4, 5))
            loss = _masked_mean(per, v_s)
            total = total + c.pv_weight * loss
            terms["pv"] = float(loss.detach())
        if self.active["relation"]:
            loss = relation_loss(teacher.bev, student.bev, c.temperature, teacher.valid)
            total = total + c.relation_weight * loss
            terms["relation"] = float(loss.detach())
        if self.active["decoder"]:
            if teacher.decoder is None or student.decoder is None:
                raise ValueError("the decoder term needs both models' decoder features (DecoderTap)")
            loss = F.mse_loss(student.decoder.float(), teacher.decoder.detach().float())
            total = total + c.decoder_weight * loss
            terms["decoder"] = float(loss.detach())
        return TemporalLosses(total, **terms)


def check_pair(teacher_cfg, student_cfg, distiller: TempDistiller) -> None:
    """The teacher and student configs fit TempDistiller (same feature shapes; learned decoder
    queries for the decoder term). ConfigError naming what differs otherwise."""
    fields = ["embed_dims", "bev_h", "bev_w", "image_size", "camera_names", "num_levels", "backbone"]
    if distiller.active["decoder"]:
        fields.append("num_queries")
    diff = [f for f in fields if getattr(teacher_cfg, f) != getattr(student_cfg, f)]
    if diff:
        raise ConfigError(
            f"TempDistiller needs the teacher's feature shapes; the student's config differs in {diff}"
        )
    if distiller.active["decoder"] and (teacher_cfg.dense_head.two_stage or student_cfg.dense_head.two_stage):
        raise ConfigError(
            "the TempDistiller decoder term needs learned decoder queries: a two-stage model takes its "
            "queries from its own heatmap peaks; set decoder: false in the distillation config"
        )


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter frozen (the teacher)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TemporalTeacher:
    """The frozen long-history teacher: its :class:`FrameFeatures` on the newest ``queue_length``
    frames of a temporal batch (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, queue_length: int, decoder: bool) -> None:
        self.model = freeze(model)
        self.queue_length = queue_length
        self.tap = DecoderTap(model) if decoder else None

    @torch.no_grad()
    def features(self, tb) -> FrameFeatures:
        from qd_perception.train.bev import encode_history_frames

        tb = last_frames(tb, self.queue_length)
        history = encode_history_frames(self.model, tb)
        prev = (history[-1].bev, tb.valid[-1], tb.motion[-1]) if history else (None, None, None)
        b = tb.current
        if self.tap is not None:
            out = self.model(b.images, b.intrinsics, b.cam2ego, *prev)
            cur_bev, cur_img, dec = out.bev, out.img_feats, self.tap.take()
        else:
            e = self.model.encode(b.images, b.intrinsics, b.cam2ego, *prev)
            cur_bev, cur_img, dec = e.bev, e.img_feats, None
        return stack_frames(history, cur_bev, cur_img, tb, self.queue_length, dec)


def student_features(tb, frames: int, out, history: list, tap: DecoderTap | None = None) -> FrameFeatures:
    """The student's :class:`FrameFeatures` on its own batch ``tb`` (``frames`` = its queue
    length): ``history`` its history encodings (``encode_history_frames``, no gradients), the
    current frame from its forward outputs ``out`` (``BEVFormerOutputs``, with gradients)."""
    dec = tap.take() if tap is not None else None
    return stack_frames(history, out.bev, out.img_feats, tb, frames, dec)


class TemporalDistillLoss(nn.Module):
    """TempDistiller as an extra loss of a training loop that already ran the student's forward
    (the QD-BEV QAT loop, ``train.quantize_bev.run_qat(extra_loss=...)``): ``loss(student, out, tb)`` on
    the teacher's long temporal batch ``tb`` re-encodes the student's short history (no
    gradients). ``student_cfg``: the student's BEVFormerConfig
    (the fake-quant model is built inside the loop). Parameters: the generators (the loop
    optimizes and checkpoints them). The decoder term runs the student's decoder once more on
    its BEV (learned queries only, so the same decoder features as its forward)."""

    def __init__(
        self,
        teacher: nn.Module,
        student_cfg,
        cfg: TemporalDistillConfig,
        t_teacher: int,
        t_student: int,
    ) -> None:
        super().__init__()
        self.distiller = TempDistiller(cfg, student_cfg.embed_dims, t_teacher, t_student)
        check_pair(teacher.cfg, student_cfg, self.distiller)
        self._teacher = TemporalTeacher(teacher, t_teacher, self.distiller.active["decoder"])
        self.last: TemporalLosses | None = None

    @property
    def queue_length(self) -> int:
        """Frames the loop's temporal batches must carry: the teacher's queue."""
        return self.distiller.t_teacher

    def forward(self, student: nn.Module, out, tb) -> torch.Tensor:
        """``tb``: the teacher's queue (:attr:`queue_length` frames, current included) of the
        samples ``out`` (the student's outputs on the newest ``t_student`` of them) came from."""
        from qd_perception.train.bev import encode_history_frames

        L_s = self.distiller.t_student
        t_feat = self._teacher.features(tb)
        s_tb = last_frames(tb, L_s)
        tap = None
        if self.distiller.active["decoder"]:
            tap = DecoderTap(student)
            student.decoder(out.bev)
            tap.close()
        s_feat = student_features(s_tb, L_s, out, encode_history_frames(student, s_tb), tap)
        self.last = self.distiller(t_feat, s_feat)
        return self.last.total


@dataclass(frozen=True)
class DistillBreakdown:
    """A distillation step's loss: ``total`` (tensor) = detection + weighted TempDistiller terms;
    the detection terms of :class:`~qd_perception.models.bevformer.losses.LossBreakdown` and the
    unweighted distillation terms as floats, for logging."""

    total: torch.Tensor
    cls: float
    bbox: float
    dense_heatmap: float
    dense_reg: float
    perspective: float
    distill: float
    distill_bev: float
    distill_pv: float
    distill_relation: float
    distill_decoder: float
    denoising: float = 0.0


#: the logged names of :class:`DistillBreakdown`, after the detection terms
DISTILL_LOG_NAMES: tuple[str, ...] = ("distill", *(f"distill_{t}" for t in TERMS))


class TemporalTrainee(nn.Module):
    """The student and the generators as one module (one optimizer, one DDP wrapper) for
    ``train bev --distill temporal``; the frozen teacher is held outside the module tree (not in
    its parameters or state_dict). ``forward(tb)``: ``tb`` carries the teacher's queue; the
    student gets its newest ``t_student`` frames. Returns a :class:`DistillBreakdown`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: TemporalDistillConfig, t_teacher: int,
                 t_student: int) -> None:  # fmt: skip
        super().__init__()
        self.student = student
        self.distiller = TempDistiller(cfg, student.cfg.embed_dims, t_teacher, t_student)
        check_pair(teacher.cfg, student.cfg, self.distiller)
        decoder = self.distiller.active["decoder"]
        self._teacher = TemporalTeacher(teacher, t_teacher, decoder)
        self._tap = DecoderTap(student) if decoder else None

    def forward(self, tb) -> DistillBreakdown:
        from qd_perception.models.bevformer.losses import detection_loss
        from qd_perception.train.bev import as_float32, encode_history_frames, history_inputs

        t_feat = self._teacher.features(tb)
        L_s = self.distiller.t_student
        s_tb = last_frames(tb, L_s)
        history = encode_history_frames(self.student, s_tb)
        self.train()
        b = s_tb.current
        prev = history_inputs(s_tb, history)
        out = self.student(b.images, b.intrinsics, b.cam2ego, *prev, dn_targets=b.targets)
        s_feat = student_features(s_tb, L_s, out, history, self._tap)
        with torch.autocast(b.images.device.type, enabled=False):
            det = detection_loss(as_float32(out), b.targets, self.student.cfg, extra=b)
            d = self.distiller(as_float32(t_feat), as_float32(s_feat))
        return DistillBreakdown(
            det.total + d.total, det.cls, det.bbox, det.dense_heatmap, det.dense_reg, det.perspective,
            float(d.total.detach()), d.bev, d.pv, d.relation, d.decoder, det.denoising,
        )  # fmt: skip
