"""ESPnet's asr_train (the Conformer baseline of stage 11) on the resumable trainer: a kill never leaves a
half-written checkpoint (``espnet_llm.tasks.resumable_trainer``), and a number that YAML read as text is refused
before anything runs (``espnet_llm.tasks.config_checks``). Options: those of ``espnet2.bin.asr_train``."""
from espnet2.tasks.asr import ASRTask

from espnet_llm.tasks.config_checks import check_numbers
from espnet_llm.tasks.resumable_trainer import ResumableTrainer


class ResumableASRTask(ASRTask):
    trainer = ResumableTrainer

    @classmethod
    def main_worker(cls, args):
        check_numbers(args)
        super().main_worker(args)


def main(cmd=None):
    ResumableASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
