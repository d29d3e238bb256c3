"""A trained speech LLM that travels: ``python -m espnet_llm.bin.pack --exp_dir exp/decoder_only/cot --outpath cot.zip``.

The pack is ESPnet's (espnet2.main_funcs.pack_funcs: a zip or tar with ``meta.yaml`` naming its files, unpacked
with the paths in its YAML files pointed at the unpacked copies) and holds what training made: the training
config, the trained weights (trainable only at full size: a few hundred MB, not 13 GB), the LLM's tokenizer, the
decode config, RESULTS.md, and ``base_models.yaml``. The frozen base models (ChatGLM3, Whisper) are named, not
packed: their config key, the path they were read from, and each file's size and sha256.
``Speech2Text.from_pretrained(pack, base_models={"llm": ..., "speech_encoder": ...})`` loads it from any
directory, checking the base models given against those records.

ESPnet's ``espnet2.bin.pack asr`` and ``espnet_model_zoo`` expect an ASR model's keys (``asr_train_config``,
``asr_model_file``); these packs name theirs ``speech_llm_train_config`` and ``speech_llm_model_file``, so
ESPnet's ``unpack`` reads them and ESPnet's ASR ``Speech2Text.from_pretrained`` does not.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml
from espnet2.main_funcs.pack_funcs import get_dict_from_cache, pack, unpack

BASE_MODELS = {"llm": "llm_conf", "speech_encoder": "speech_encoder_conf"}  # name -> config key holding model_path
HASHED_ON_LOAD = 64 * 2**20  # files up to this size are checked by sha256 on load, larger ones by size (13 GB)
BASE_MODELS_FILE = "base_models.yaml"


class BaseModelMismatch(ValueError):
    """A base model given to a pack that is not the one it was trained on."""


def file_records(path: Path) -> dict:
    """{relative file name: {size, sha256}} of a model directory (or of one model file)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    records = {}
    for f in files:
        digest = hashlib.sha256()
        with f.open("rb") as stream:
            for block in iter(lambda: stream.read(2**24), b""):
                digest.update(block)
        records[str(f.relative_to(path)) if path.is_dir() else f.name] = {"size": f.stat().st_size,
                                                                          "sha256": digest.hexdigest()}
    return records


def base_model_records(train_config: dict) -> dict:
    """The frozen base models of a training config: their config key, path and files."""
    records = {}
    for name, key in BASE_MODELS.items():
        path = (train_config.get(key) or {}).get("model_path")
        if path:
            if not Path(path).exists():
                raise FileNotFoundError(f"{key}.model_path: {path} does not exist (pack from the recipe directory)")
            records[name] = {"config_key": f"{key}.model_path", "path": str(Path(path).resolve()),
                             "files": file_records(Path(path))}
    return records


def check_base_model(name: str, path: Path, record: dict) -> None:
    """Refuse a base model whose files are not those recorded at packing (sizes; sha256 of the small ones)."""
    for rel, expected in record["files"].items():
        f = path / rel if path.is_dir() else path
        if not f.is_file():
            raise BaseModelMismatch(f"base model {name} ({path}): {rel} is missing")
        if f.stat().st_size != expected["size"]:
            raise BaseModelMismatch(
                f"base model {name} ({path}): {rel} has {f.stat().st_size} bytes, the packed model's {expected['size']}")
        if expected["size"] <= HASHED_ON_LOAD:
            sha = file_records(f)[f.name]["sha256"]
            if sha != expected["sha256"]:
                raise BaseModelMismatch(f"base model {name} ({path}): {rel} has sha256 {sha[:12]}..., the packed "
                                        f"model's {expected['sha256'][:12]}...: not the model it was trained on")


def pack_model(exp_dir: str, outpath: str, model_file: str = "valid.acc_current.ave.pth",
               decode_config: str | None = None, results: str | None = None) -> None:
    """Write the pack of the run in ``exp_dir`` (run from the recipe directory: the config's paths are relative
    to it)."""
    exp = Path(exp_dir)
    config_file, model = exp / "config.yaml", exp / model_file
    for f in (config_file, model, *(p for p in (decode_config, results) if p)):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f} does not exist")
    train_config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    records = base_model_records(train_config)
    (exp / BASE_MODELS_FILE).write_text(yaml.safe_dump(records, allow_unicode=True, sort_keys=False), encoding="utf-8")
    files = {"speech_llm_model_file": model, "base_models": exp / BASE_MODELS_FILE}
    if "llm" in records:
        files["tokenizer"] = Path(train_config["llm_conf"]["model_path"]) / "tokenizer.model"
    yaml_files = {"speech_llm_train_config": config_file}
    if decode_config:
        yaml_files["decode_config"] = decode_config
    pack(files=files, yaml_files=yaml_files, option=[results] if results else [], outpath=outpath)


def unpacked(model: str | Path, cache_dir: str | Path | None = None) -> dict[str, str]:
    """The files of a pack (zip or tar, unpacked into ``cache_dir``, by default beside it; or a directory
    unpacked before), or of a run directory (its config.yaml and valid.acc_current.ave.pth)."""
    model = Path(model)
    if model.is_dir():
        if (model / "meta.yaml").is_file():
            return get_dict_from_cache(model / "meta.yaml") or {}
        files = {"speech_llm_train_config": str(model / "config.yaml")}
        if (model / "valid.acc_current.ave.pth").is_file():
            files["speech_llm_model_file"] = str(model / "valid.acc_current.ave.pth")
        if not Path(files["speech_llm_train_config"]).is_file():
            raise FileNotFoundError(f"{model}: neither a pack (meta.yaml) nor a run directory (config.yaml)")
        return files
    if not model.is_file():
        raise FileNotFoundError(f"{model} does not exist")
    return unpack(model, cache_dir or model.with_name(model.name.split(".")[0] + "_unpacked"))


def resolve_base_models(files: dict[str, str], base_models: dict[str, str] | None = None) -> str:
    """Point the unpacked training config at the base models (``base_models``: name -> path; by default the
    paths recorded at packing), each checked against its record. -> the training config to load."""
    config_file = files["speech_llm_train_config"]
    if "base_models" not in files:  # a run directory: its config's own paths
        return config_file
    records = yaml.safe_load(Path(files["base_models"]).read_text(encoding="utf-8")) or {}
    unknown = set(base_models or {}) - set(records)
    if unknown:
        raise ValueError(f"base_models {sorted(unknown)}: this pack's base models are {sorted(records)}")
    config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
    for name, record in records.items():
        path = Path((base_models or {}).get(name) or record["path"])
        if not path.exists():
            raise FileNotFoundError(f"base model {name} not found at {path}: give it as base_models={{'{name}': ...}} "
                                    f"(a copy of the one at {record['path']} when packed)")
        check_base_model(name, path, record)
        section, key = record["config_key"].split(".")
        config[section] = {**config[section], key: str(path.resolve())}
    resolved = Path(config_file).with_name("config.resolved.yaml")
    resolved.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return str(resolved)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--exp_dir", required=True, help="the run directory (config.yaml and the model file)")
    parser.add_argument("--model_file", default="valid.acc_current.ave.pth", help="in --exp_dir")
    parser.add_argument("--decode_config", help="e.g. conf/tiny/decode_speech_llm.yaml: from_pretrained's defaults")
    parser.add_argument("--results", help="RESULTS.md, packed beside the model")
    parser.add_argument("--outpath", required=True, help="the pack: .zip, .tar, .tgz, .tar.bz2 or .tar.xz")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    try:
        pack_model(args.exp_dir, args.outpath, args.model_file, args.decode_config, args.results)
    except FileNotFoundError as error:
        sys.exit(f"ERROR: {error}")


if __name__ == "__main__":
    main()
