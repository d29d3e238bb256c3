"""Speech LLMs (Whisper + ChatGLM3) for Chinese ASR and NER, as ESPnet tasks.

Importing the package first quiets, in every ``python -m espnet_llm...`` process, what ESPnet's imports say that is
known to be harmless here; errors and progress are left as they are.
"""
import importlib
import importlib.util
import sys
import types
import warnings


class _ImportedOnFirstUse(types.ModuleType):
    """Stands in sys.modules for a module until one of its names is used, then imports it. Hand-written: the
    standard library's LazyLoader runs the module on any attribute, and inspect.getmodule, which torch calls while
    importing, reads ``__file__`` of every module."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def _import_on_first_use(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if name in sys.modules or spec is None:
        return
    module = _ImportedOnFirstUse(name)
    module.__file__, module.__spec__ = spec.origin, spec
    sys.modules[name] = module


# espnet2's tokenizers import g2p_en (English phonemes, never used here), whose import tries to download NLTK data
# and prints eight lines of errors without a network
_import_on_first_use("g2p_en")
# espnet2's enhancement layers decorate with torch.cuda.amp.autocast, deprecated by torch; nothing here calls them
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast", category=FutureWarning)
# peft reads transformers' is_gradient_checkpointing, renamed is_activation_checkpointing in transformers 5
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
