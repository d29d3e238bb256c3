"""ESPnet's asr_train (the Conformer baseline of stage 11) on the resumable trainer: a kill never leaves a
half-written checkpoint (``espnet_llm.tasks.resumable_trainer``). Options: those of ``espnet2.bin.asr_train``."""
from espnet2.tasks.asr import ASRTask

from espnet_llm.tasks.resumable_trainer import ResumableTrainer


class ResumableASRTask(ASRTask):
    trainer = ResumableTrainer


def main(cmd=None):
    ResumableASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
