"""Importing espnet_llm quiets what ESPnet's imports say that is harmless here, and takes nothing away."""
import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_espnet_imports_try_no_nltk_download_and_warn_nothing_known():
    proc = python("import espnet_llm.tasks.speech_llm, espnet2.tasks.asr, espnet2.bin.asr_inference")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "nltk" not in output and "FutureWarning" not in output, output


def test_lora_on_a_glm_warns_nothing_known():
    proc = python("import espnet_llm, peft\n"
                  "from transformers import GlmConfig, GlmForCausalLM\n"
                  "config = GlmConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,\n"
                  "                   num_key_value_heads=2, head_dim=16, vocab_size=100, pad_token_id=0)\n"
                  "peft.get_peft_model(GlmForCausalLM(config), peft.LoraConfig(r=2, target_modules=['q_proj']))\n")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr, proc.stderr


def test_g2p_en_is_imported_where_it_is_used():
    proc = python("import espnet_llm\n"
                  "from espnet2.text import phoneme_tokenizer\n"
                  "import sys\n"
                  "assert type(sys.modules['g2p_en']).__name__ == '_ImportedOnFirstUse'\n"
                  "print(phoneme_tokenizer.g2p_en.G2p.__module__, phoneme_tokenizer.g2p_en.G2p is sys.modules['g2p_en'].G2p)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "g2p_en.g2p True"
