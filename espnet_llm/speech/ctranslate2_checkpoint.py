"""CTranslate2 Whisper models (faster-whisper directories: ``model.bin`` + ``config.json``) as transformers Whisper.

``model.bin`` (written by ctranslate2/specs/model_spec.py, read by src/models/model.cc), little-endian:

- ``uint32`` binary version (1 to 6 are known; from 2 on a spec name and revision follow, from 3 on
  aliases end the file, from 4 on each variable names its dtype instead of its item size);
- string spec name (``WhisperSpec``), ``uint32`` spec revision; a string is a ``uint16`` length that
  counts a closing NUL, then the bytes and the NUL;
- ``uint32`` variable count, then each variable: string name (``encoder/layer_0/ffn/linear_0/weight``),
  ``uint8`` rank, ``uint32`` per dimension, ``uint8`` dtype id (float32, int8, int16, int32, float16,
  bfloat16 in this order), ``uint32`` byte count, the row-major data;
- ``uint32`` alias count, then (alias, variable) string pairs: a variable equal to another one is
  stored once (the decoder's output projection is the token embedding, and in an untrained model
  every layer norm is the same).

Rank-0 variables are the spec's options (head counts, the activation, ...), not weights: they go into
the config, and each one is checked against the architecture that transformers' Whisper implements.

CTranslate2 fuses what transformers keeps apart: self-attention's query, key and value are one linear
(``linear_0``, rows q, k, v; ``linear_1`` is the output), cross-attention's key and value are one
(``linear_1``, rows k, v; ``linear_0`` is the query, ``linear_2`` the output). Whisper's key has no
bias, so those rows of a fused bias must be zero. Layer norms are ``gamma``/``beta``; int8 and int16
weights carry a ``weight_scale`` and are dequantized (w / scale) into the model's float dtype; float16
and bfloat16 stay what they are.

The mapping is strict: a variable nobody maps, a weight the model lacks, or an option whose value
transformers' Whisper cannot express is an error naming it. Variables are read one at a time, by
seeking in the file, and the converter streams them into ``model.safetensors``; the file is never
held in memory whole.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

__all__ = [
    "CT2Variable",
    "CT2Model",
    "MappedVariable",
    "convert_ctranslate2_whisper",
    "ctranslate2_to_transformers_names",
    "ctranslate2_whisper_config",
    "ctranslate2_whisper_state_dict",
    "is_ctranslate2_whisper_dir",
    "load_ctranslate2_whisper_encoder",
    "read_ctranslate2_model",
    "read_variable",
]

MODEL_FILE = "model.bin"
KNOWN_BINARY_VERSIONS = range(1, 7)
SPEC_NAME = "WhisperSpec"
# dtype ids of model.bin (from binary version 4 on), in the order of CTranslate2's DataType enum.
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
# Binary versions 1-3 name the item size only.
DTYPES_OF_ITEM_SIZE = {4: "float32", 2: "int16", 1: "int8"}
NUMPY_DTYPES = {
    "float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32,
    "float16": np.float16, "bfloat16": np.int16,  # bfloat16: read as raw 16-bit words, viewed by torch
}
TORCH_DTYPES = {
    "float32": torch.float32, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
    "float16": torch.float16, "bfloat16": torch.bfloat16,
}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
ACTIVATION_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU

# --- names -----------------------------------------------------------------------------------------
# CTranslate2's names inside a layer -> transformers' names inside the layer, one per block of rows of
# the (possibly fused) CTranslate2 variable, in row order; None: rows that must be zero (Whisper's key
# projections have no bias).
ENCODER_LAYER_NAMES: dict[str, tuple[str | None, ...]] = {
    "self_attention/layer_norm/gamma": ("self_attn_layer_norm.weight",),
    "self_attention/layer_norm/beta": ("self_attn_layer_norm.bias",),
    "self_attention/linear_0/weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "self_attention/linear_0/bias": ("self_attn.q_proj.bias", None, "self_attn.v_proj.bias"),
    "self_attention/linear_1/weight": ("self_attn.out_proj.weight",),
    "self_attention/linear_1/bias": ("self_attn.out_proj.bias",),
    "ffn/layer_norm/gamma": ("final_layer_norm.weight",),
    "ffn/layer_norm/beta": ("final_layer_norm.bias",),
    "ffn/linear_0/weight": ("fc1.weight",),
    "ffn/linear_0/bias": ("fc1.bias",),
    "ffn/linear_1/weight": ("fc2.weight",),
    "ffn/linear_1/bias": ("fc2.bias",),
}
DECODER_LAYER_NAMES: dict[str, tuple[str | None, ...]] = {
    **ENCODER_LAYER_NAMES,
    "attention/layer_norm/gamma": ("encoder_attn_layer_norm.weight",),
    "attention/layer_norm/beta": ("encoder_attn_layer_norm.bias",),
    "attention/linear_0/weight": ("encoder_attn.q_proj.weight",),
    "attention/linear_0/bias": ("encoder_attn.q_proj.bias",),
    "attention/linear_1/weight": ("encoder_attn.k_proj.weight", "encoder_attn.v_proj.weight"),
    "attention/linear_1/bias": (None, "encoder_attn.v_proj.bias"),
    "attention/linear_2/weight": ("encoder_attn.out_proj.weight",),
    "attention/linear_2/bias": ("encoder_attn.out_proj.bias",),
}
# Outside the layers (names of WhisperForConditionalGeneration).
STEM_NAMES: dict[str, tuple[str | None, ...]] = {
    "encoder/conv1/weight": ("model.encoder.conv1.weight",),
    "encoder/conv1/bias": ("model.encoder.conv1.bias",),
    "encoder/conv2/weight": ("model.encoder.conv2.weight",),
    "encoder/conv2/bias": ("model.encoder.conv2.bias",),
    "encoder/position_encodings/encodings": ("model.encoder.embed_positions.weight",),
    "encoder/layer_norm/gamma": ("model.encoder.layer_norm.weight",),
    "encoder/layer_norm/beta": ("model.encoder.layer_norm.bias",),
    "decoder/embeddings/weight": ("model.decoder.embed_tokens.weight",),
    "decoder/position_encodings/encodings": ("model.decoder.embed_positions.weight",),
    "decoder/layer_norm/gamma": ("model.decoder.layer_norm.weight",),
    "decoder/layer_norm/beta": ("model.decoder.layer_norm.bias",),
    # An alias of decoder/embeddings/weight (tied) in every converted Whisper; if it is stored on its
    # own, the config unties it.
    "decoder/projection/weight": ("proj_out.weight",),
}
TIED_PROJECTION = ("decoder/projection/weight", "decoder/embeddings/weight")

# Rank-0 variables: the spec's options. Config fields are read; the others must have the value of
# transformers' Whisper (pre-norm, exact GELU, no embedding scale, learned/sinusoidal position tables).
OPTION_FIELDS = {"encoder/num_heads": "encoder_attention_heads", "decoder/num_heads": "decoder_attention_heads"}
OPTION_VALUES = {
    "decoder/pre_norm": 1,
    "decoder/activation": ACTIVATION_GELU,
    "decoder/scale_embeddings": 0,  # False (a float factor of 1.0 is accepted too)
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": 0,
    "decoder/scale_alibi": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/multi_query_attention": 0,
}
# Only word-level timestamps use these (CTranslate2's Whisper.align); they are reported, not used.
OPTIONS_NOT_USED = ("decoder/alignment_layer", "decoder/alignment_heads")


def ctranslate2_to_transformers_names(ct2_name: str) -> tuple[str | None, ...]:
    """``encoder/layer_3/self_attention/linear_0/weight`` -> the q, k, v weights of transformers'
    ``model.encoder.layers.3``, one name per block of rows (None: rows that must be zero).

    KeyError for a name that is not a Whisper weight."""
    layer = re.fullmatch(r"(encoder|decoder)/layer_(\d+)/(.+)", ct2_name)
    if layer:
        table = ENCODER_LAYER_NAMES if layer[1] == "encoder" else DECODER_LAYER_NAMES
        if layer[3] in table:
            prefix = f"model.{layer[1]}.layers.{layer[2]}."
            return tuple(None if name is None else prefix + name for name in table[layer[3]])
    elif ct2_name in STEM_NAMES:
        return STEM_NAMES[ct2_name]
    raise KeyError(f"CTranslate2 Whisper variable '{ct2_name}' has no transformers counterpart")


# --- model.bin -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CT2Variable:
    """A variable of model.bin: where its data lie, not the data (``value`` only for rank 0)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int  # of the data, in bytes from the start of model.bin
    num_bytes: int
    value: int | float | None = None  # of a rank-0 variable (a spec option)


@dataclass
class CT2Model:
    """The header of a model.bin: every variable's name, shape, dtype and place, and the aliases."""

    path: Path
    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, CT2Variable]
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> the stored variable it names

    def resolve(self, name: str) -> CT2Variable:
        """A variable by its own name or by an alias."""
        return self.variables[self.aliases.get(name, name)]


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{f.name}: truncated at byte {f.tell()} (expected {size} more bytes)")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (length,) = _read(f, "<H")  # counts the closing NUL
    if length == 0:
        raise ValueError(f"{f.name}: invalid string length 0 at byte {f.tell() - 2}")
    data = f.read(length)
    if len(data) != length:
        raise ValueError(f"{f.name}: truncated string at byte {f.tell()}")
    return data[:-1].decode("utf-8")


def read_ctranslate2_model(model_dir: str | Path) -> CT2Model:
    """Read the header of ``model_dir/model.bin``: the data of the weights are skipped, not read."""
    path = Path(model_dir) / MODEL_FILE
    with open(path, "rb") as f:
        file_size = path.stat().st_size
        (binary_version,) = _read(f, "<I")
        if binary_version not in KNOWN_BINARY_VERSIONS:
            raise ValueError(f"{path}: CTranslate2 binary version {binary_version} is not one of "
                             f"{KNOWN_BINARY_VERSIONS.start}-{KNOWN_BINARY_VERSIONS.stop - 1}")
        spec, revision = "", 1
        if binary_version >= 2:
            spec = _read_string(f)
            (revision,) = _read(f, "<I")
        (count,) = _read(f, "<I")
        variables: dict[str, CT2Variable] = {}
        for _ in range(count):
            name = _read_string(f)
            (rank,) = _read(f, "<B")
            shape = _read(f, f"<{rank}I") if rank else ()
            if binary_version >= 4:
                type_id, num_bytes = _read(f, "<BI")
                if type_id >= len(DTYPES):
                    raise ValueError(f"{path}: variable '{name}' has unknown dtype id {type_id}")
                dtype = DTYPES[type_id]
            else:
                item_size, num_items = _read(f, "<BI")
                if item_size not in DTYPES_OF_ITEM_SIZE:
                    raise ValueError(f"{path}: variable '{name}' has unknown item size {item_size}")
                dtype, num_bytes = DTYPES_OF_ITEM_SIZE[item_size], num_items * item_size
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
            if num_bytes != expected:
                raise ValueError(
                    f"{path}: variable '{name}' {list(shape)} {dtype} has {num_bytes} bytes, not {expected}")
            offset = f.tell()
            if offset + num_bytes > file_size:
                raise ValueError(f"{path}: variable '{name}' runs past the end of the file")
            value = None
            if rank == 0:
                value = np.frombuffer(f.read(num_bytes), dtype=NUMPY_DTYPES[dtype])[0].item()
            else:
                f.seek(num_bytes, 1)
            if name in variables:
                raise ValueError(f"{path}: variable '{name}' is stored twice")
            variables[name] = CT2Variable(name, tuple(shape), dtype, offset, num_bytes, value)
        aliases: dict[str, str] = {}
        if binary_version >= 3:
            (count,) = _read(f, "<I")
            for _ in range(count):
                alias, target = _read_string(f), _read_string(f)
                if target not in variables:
                    raise ValueError(f"{path}: alias '{alias}' names '{target}', which is not stored")
                aliases[alias] = target
        if f.tell() != file_size:
            raise ValueError(f"{path}: {file_size - f.tell()} bytes after the aliases (not a model.bin?)")
    return CT2Model(path, binary_version, spec, revision, variables, aliases)


def read_variable(f: BinaryIO, variable: CT2Variable) -> torch.Tensor:
    """One variable's data, in its own dtype (a seek and a read of that variable only)."""
    f.seek(variable.offset)
    array = np.fromfile(f, dtype=NUMPY_DTYPES[variable.dtype], count=variable.num_bytes // np.dtype(
        NUMPY_DTYPES[variable.dtype]).itemsize)
    tensor = torch.from_numpy(array).reshape(variable.shape)
    return tensor.view(torch.bfloat16) if variable.dtype == "bfloat16" else tensor


# --- the mapping -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MappedVariable:
    """One line of the conversion report: a CTranslate2 variable and what it became."""

    ct2_name: str
    targets: tuple[str | None, ...]  # transformers names in row order (None: zero rows); a config field
    shape: tuple[int, ...]
    dtype: str  # as stored; "int8 -> float16" where dequantized
    alias_of: str | None = None
    note: str = ""

    def __str__(self) -> str:
        if not self.shape:  # a spec option: its value is in the note
            return f"{self.ct2_name} ({self.dtype} option) = {self.note}"
        targets = ", ".join("(zero rows)" if t is None else t for t in self.targets)
        stored = f" (alias of {self.alias_of})" if self.alias_of else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.ct2_name}{stored} -> {targets} {list(self.shape)} {self.dtype}{note}"


@dataclass(frozen=True)
class _Piece:
    """A transformers tensor: rows [start, stop) of a CTranslate2 variable (after dequantization)."""

    name: str
    source: str  # the stored variable
    scale: str | None  # its stored weight_scale variable, for int8/int16 weights
    start: int
    stop: int
    shape: tuple[int, ...]


@dataclass
class _Plan:
    model: CT2Model
    config: WhisperConfig
    float_dtype: torch.dtype
    pieces: list[_Piece]
    zero_rows: list[tuple[str, str, int, int, str]]  # (ct2 name, stored variable, start, stop, a sibling's
    # transformers name): rows that must be zero
    report: list[MappedVariable]


def _layer_count(names: list[str], half: str) -> int:
    layers = {int(m[1]) for n in names if (m := re.match(rf"{half}/layer_(\d+)/", n))}
    if layers != set(range(len(layers))):
        raise ValueError(f"{half} layers are not numbered 0..{len(layers) - 1}: {sorted(layers)}")
    return len(layers)


def _ct2_config_json(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _vocabulary(model_dir: Path) -> list[str] | None:
    """CTranslate2's vocabulary.json (newer converters) or vocabulary.txt (one token a line)."""
    if (model_dir / "vocabulary.json").is_file():
        return json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (model_dir / "vocabulary.txt").is_file():
        return (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return None


def _check_options(model: CT2Model) -> None:
    for name, variable in model.variables.items():
        if variable.shape or name.endswith("_scale"):
            continue
        if name in OPTION_FIELDS or name in OPTIONS_NOT_USED:
            continue
        if name not in OPTION_VALUES:
            raise ValueError(f"{model.path}: unknown CTranslate2 Whisper option '{name}' = {variable.value}")
        wanted = OPTION_VALUES[name]
        ok = variable.value == wanted or (name == "decoder/scale_embeddings" and variable.dtype == "float32"
                                          and variable.value == 1.0)
        if not ok:
            raise ValueError(f"{model.path}: option '{name}' = {variable.value}: transformers' Whisper needs {wanted}")


def _whisper_config(model: CT2Model) -> WhisperConfig:
    """The WhisperConfig of a model.bin header (shapes and options) and of the directory's config.json."""
    if model.spec != SPEC_NAME:
        raise ValueError(f"{model.path}: a CTranslate2 '{model.spec or 'TransformerSpec'}' model, not a {SPEC_NAME}")
    _check_options(model)
    names = list(model.variables) + list(model.aliases)

    def shape(name: str) -> tuple[int, ...]:
        try:
            return model.resolve(name).shape
        except KeyError:
            raise ValueError(f"{model.path}: variable '{name}' is missing") from None

    def option(name: str) -> int:
        if name not in model.variables:
            raise ValueError(f"{model.path}: option '{name}' is missing")
        return int(model.variables[name].value)

    d_model = shape("encoder/layer_norm/gamma")[0]
    for half in ("encoder", "decoder"):
        heads = option(f"{half}/num_heads")
        if d_model % heads:
            raise ValueError(f"{model.path}: d_model {d_model} is not a multiple of {half}'s {heads} heads")
    model_dir = model.path.parent
    ct2_config = _ct2_config_json(model_dir)
    vocab_size = shape("decoder/embeddings/weight")[0]
    # Token ids: the vocabulary's, if it is there; otherwise those of OpenAI's tokenizers (multilingual:
    # 51865 tokens and more, English: 51864). A vocabulary that has neither gets no special tokens, and
    # the decoder starts from token 0 (WhisperConfig insists on a start token within the vocabulary).
    token_ids = {token: i for i, token in enumerate(_vocabulary(model_dir) or [])}
    openai = {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258 if vocab_size >= 51865 else 50257}
    eos, start = (token_ids.get(token, openai[token] if vocab_size >= 51864 else None) for token in openai)
    start = 0 if start is None else start
    tied = model.aliases.get(TIED_PROJECTION[0]) == TIED_PROJECTION[1]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=shape("encoder/conv1/weight")[1],
        d_model=d_model,
        encoder_layers=_layer_count(names, "encoder"),
        encoder_attention_heads=option("encoder/num_heads"),
        encoder_ffn_dim=shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_layers=_layer_count(names, "decoder"),
        decoder_attention_heads=option("decoder/num_heads"),
        decoder_ffn_dim=shape("decoder/layer_0/ffn/linear_0/weight")[0],
        max_source_positions=shape("encoder/position_encodings/encodings")[0],
        max_target_positions=shape("decoder/position_encodings/encodings")[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=start,
        # CTranslate2's config.json: suppress_ids(_begin). (lang_ids and alignment_heads belong to
        # transformers' generation config, which is not written.)
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
    )


def _plan(model: CT2Model) -> _Plan:
    """Map every variable and alias of ``model`` (strictly), without reading any weight."""
    config = _whisper_config(model)
    # The float dtype of the model: that of its layer norms (never quantized).
    float_dtype = TORCH_DTYPES[model.resolve("encoder/layer_norm/gamma").dtype]
    config.dtype = float_dtype  # what model.safetensors holds
    pieces: list[_Piece] = []
    zero_rows: list[tuple[str, str, int, int, str]] = []
    report: list[MappedVariable] = []
    scales = {n for n in model.variables if n.endswith("_scale")}
    used_scales: set[str] = set()
    for ct2_name in list(model.variables) + list(model.aliases):
        if ct2_name in scales:
            continue  # taken with its weight
        variable = model.resolve(ct2_name)
        alias_of = model.aliases.get(ct2_name)
        if not variable.shape:  # a spec option
            field_name = OPTION_FIELDS.get(ct2_name)
            if field_name:
                note = f"{variable.value} -> config.{field_name}"
            elif ct2_name in OPTION_VALUES:
                note = f"{variable.value} (checked against transformers' Whisper)"
            else:
                note = f"{variable.value} (not used: word alignment only)"
            report.append(MappedVariable(ct2_name, (f"config.{field_name}",) if field_name else (), (),
                                         variable.dtype, alias_of, note))
            continue
        if ct2_name.endswith("_zero"):
            raise ValueError(f"{model.path}: '{ct2_name}': zero-point (AWQ) quantization is not supported")
        if ct2_name == TIED_PROJECTION[0] and alias_of == TIED_PROJECTION[1]:
            report.append(MappedVariable(ct2_name, ("proj_out.weight",), variable.shape, variable.dtype, alias_of,
                                         "tied to model.decoder.embed_tokens.weight (not stored)"))
            continue
        try:
            targets = ctranslate2_to_transformers_names(ct2_name)
        except KeyError as err:
            raise ValueError(f"{model.path}: {err.args[0]}") from None
        scale_name = f"{variable.name}_scale"
        scale = scale_name if scale_name in model.variables else None
        dtype = variable.dtype
        if scale:
            used_scales.add(scale_name)
            dtype = f"{variable.dtype} -> {str(float_dtype).removeprefix('torch.')} (dequantized)"
        elif variable.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"{model.path}: '{ct2_name}' is {variable.dtype} without a weight_scale")
        rows = variable.shape[0]
        if rows % len(targets):
            raise ValueError(f"{model.path}: '{ct2_name}' {list(variable.shape)}: {rows} rows do not split "
                             f"into {len(targets)} equal parts")
        step = rows // len(targets)
        for i, target in enumerate(targets):
            if target is None:
                sibling = next(t for t in targets if t is not None)
                zero_rows.append((ct2_name, variable.name, i * step, (i + 1) * step, sibling))
            else:
                pieces.append(_Piece(target, variable.name, scale, i * step, (i + 1) * step,
                                     (step, *variable.shape[1:])))
        report.append(MappedVariable(ct2_name, targets, variable.shape, dtype, alias_of))
    for name in sorted(scales - used_scales):
        raise ValueError(f"{model.path}: '{name}' scales no mapped weight")
    # Exactly the parameters of WhisperForConditionalGeneration, with their shapes.
    expected = _expected_shapes(config)
    got = {p.name: p.shape for p in pieces}
    duplicates = sorted({p.name for p in pieces if sum(q.name == p.name for q in pieces) > 1})
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(n for n in set(got) & set(expected) if tuple(got[n]) != tuple(expected[n]))
    problems = [
        f"{what}: {names}" for what, names in (
            ("mapped twice", duplicates), ("missing from model.bin", missing), ("not a Whisper weight", extra),
            ("wrong shape", [f"{n} {list(got[n])} (config: {list(expected[n])})" for n in wrong]),
        ) if names
    ]
    if problems:
        raise ValueError(f"{model.path}: " + "; ".join(problems))
    return _Plan(model, config, float_dtype, pieces, zero_rows, report)


def _expected_shapes(config: WhisperConfig) -> dict[str, tuple[int, ...]]:
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("proj_out.weight")
    return shapes


def _tensors(plan: _Plan, f: BinaryIO, only: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(transformers name, tensor) in plan order, reading each stored variable when its first piece comes."""
    for ct2_name, source, start, stop, sibling in plan.zero_rows:
        if only is not None and not sibling.startswith(only):
            continue
        rows = read_variable(f, plan.model.variables[source])[start:stop]
        if torch.any(rows != 0):
            raise ValueError(f"{plan.model.path}: '{ct2_name}' rows {start}:{stop} are the bias of Whisper's key "
                             "projection, which has none, but they are not zero")
    cached: tuple[tuple[str, str | None], torch.Tensor] | None = None
    for piece in plan.pieces:
        if only is not None and not piece.name.startswith(only):
            continue
        key = (piece.source, piece.scale)
        if cached is None or cached[0] != key:
            value = read_variable(f, plan.model.variables[piece.source])
            if piece.scale:
                scale = read_variable(f, plan.model.variables[piece.scale]).float()
                scale = scale.reshape(-1, *([1] * (value.dim() - 1))) if scale.dim() else scale
                value = (value.float() / scale).to(plan.float_dtype)
            cached = (key, value)
        tensor = cached[1][piece.start:piece.stop]
        yield piece.name, tensor


# --- public API ------------------------------------------------------------------------------------
def is_ctranslate2_whisper_dir(path: str | Path) -> bool:
    """A directory with a CTranslate2 ``model.bin`` (a faster-whisper model directory)."""
    path = Path(path)
    return path.is_dir() and (path / MODEL_FILE).is_file()


def ctranslate2_whisper_config(model_dir: str | Path) -> WhisperConfig:
    """The transformers WhisperConfig of a CTranslate2 Whisper directory; only headers are read."""
    return _plan(read_ctranslate2_model(model_dir)).config


def ctranslate2_whisper_state_dict(model_dir: str | Path, dtype: torch.dtype | None = None,
                                   prefix: str | None = None) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """(config, WhisperForConditionalGeneration state dict) in memory; ``prefix`` keeps only those names
    (e.g. ``model.encoder.``). dtype None keeps the stored dtype (int8/int16 weights: the model's float dtype)."""
    plan = _plan(read_ctranslate2_model(model_dir))
    with open(plan.model.path, "rb") as f:  # copies: a piece of a fused variable must not keep all of it
        return plan.config, {name: t.to(dtype or t.dtype, copy=True) for name, t in _tensors(plan, f, only=prefix)}


def load_ctranslate2_whisper_encoder(model_dir: str | Path, dtype: torch.dtype | None = None) -> WhisperEncoder:
    """transformers' WhisperEncoder from a CTranslate2 Whisper directory, converted in memory (the
    decoder's variables are not read). dtype None keeps the stored one (float16 for faster-whisper's)."""
    prefix = "model.encoder."
    config, state = ctranslate2_whisper_state_dict(model_dir, dtype=dtype, prefix=prefix)
    state = {name.removeprefix(prefix): tensor for name, tensor in state.items()}
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder


def convert_ctranslate2_whisper(ct2_dir: str | Path, output_dir: str | Path) -> list[MappedVariable]:
    """Write a transformers WhisperForConditionalGeneration directory (config.json, model.safetensors,
    and tokenizer.json if the CTranslate2 directory has one) with the stored dtypes; return the mapping,
    one line per CTranslate2 variable or alias. The weights are streamed, one variable at a time."""
    plan = _plan(read_ctranslate2_model(ct2_dir))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    begin = 0
    for piece in plan.pieces:
        stored = plan.model.variables[piece.source]
        dtype = plan.float_dtype if piece.scale else TORCH_DTYPES[stored.dtype]
        size = int(np.prod(piece.shape, dtype=np.int64)) * dtype.itemsize
        header[piece.name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(piece.shape),
                              "data_offsets": [begin, begin + size]}
        begin += size
    # Written here rather than by safetensors' save_file, which needs every tensor in memory at once: the
    # format is the header's length (uint64), the JSON header, then the data at its offsets.
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data start 8-byte aligned
    partial = output_dir / "model.safetensors.partial"
    try:
        with open(plan.model.path, "rb") as f, open(partial, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            for name, tensor in _tensors(plan, f):
                if out.tell() - 8 - len(encoded) != header[name]["data_offsets"][0]:
                    raise AssertionError(f"safetensors offset of {name} out of order")
                data = tensor.contiguous()
                data = data.view(torch.int16) if data.dtype == torch.bfloat16 else data  # numpy has no bfloat16
                out.write(memoryview(data.numpy()).cast("B"))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output_dir / "model.safetensors")
    plan.config.save_pretrained(output_dir)
    tokenizer = Path(ct2_dir) / "tokenizer.json"
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, output_dir / "tokenizer.json")
    return plan.report
