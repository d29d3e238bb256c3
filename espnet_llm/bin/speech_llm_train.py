"""Train a speech LLM (Whisper + ChatGLM3) with ESPnet's trainer: ``python -m espnet_llm.bin.speech_llm_train``."""
from espnet_llm.tasks.speech_llm import SpeechLLMTask


def get_parser():
    return SpeechLLMTask.get_parser()


def main(cmd=None):
    r"""Speech LLM training.

    Example:
        % python -m espnet_llm.bin.speech_llm_train --print_config --model encoder_decoder
        % python -m espnet_llm.bin.speech_llm_train --config conf/train_decoder_only_short.yaml \
            --output_dir exp/llm_decoder_only_short ...
    """
    SpeechLLMTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
