"""libespeak-ng 1.52 through espeakng-loader: Mandarin phonemes, language switches, speech."""
import multiprocessing

import numpy as np
import pytest

from espnet_llm.mini.mandarin_tts import LanguageSwitchError, MandarinSpeaker, Voice

CMN = Voice("cmn", 50, 220)


@pytest.fixture(scope="module")
def tts() -> MandarinSpeaker:
    return MandarinSpeaker()


def test_it_is_libespeak_ng_1_52_and_reads_chinese_as_mandarin(tts):
    assert tts.version.startswith("1.52")
    # Debian's espeak-ng 1.51 gives "(en)nI55Tr'i:55 h,eI55@55Tr'i:55(cmn)_| ts.'ong55_| (en)gju:22@11tu:11(cmn)_|"
    assert tts.phonemes("你好中国", CMN) == "ni2χˈɑu2 ts.ˈonɡ5 kˈuoɜ"
    assert tts.other_languages("你好中国", CMN) == []
    tts.check_mandarin("各地调价项目不宜过于集中", Voice("cmn+f4", 75, 200))


def test_latin_letters_are_a_language_switch(tts):
    assert tts.other_languages("我有ABC公司", CMN) == ["en"]
    with pytest.raises(LanguageSwitchError, match="reads '我有ABC公司' partly as en"):
        tts.check_mandarin("我有ABC公司", CMN)


def speak_in_child(args):
    text, voice = args
    return _TTS[0].speak(text, voice)


_TTS = []  # inherited by the forked children


def test_speech_in_a_fresh_process_is_deterministic_and_voices_differ(tts):
    text = "各地调价项目不宜过于集中"
    _TTS[:] = [tts]
    with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        first, again = pool.map(speak_in_child, [(text, CMN), (text, CMN)], chunksize=1)
    assert tts.sample_rate == 22050 and first.dtype == np.int16
    assert 1.5 < len(first) / tts.sample_rate < 6  # twelve syllables
    assert np.sqrt(np.mean(first.astype(float) ** 2)) > 300  # speech, not silence
    assert np.array_equal(first, again)
    slower = tts.speak(text, Voice("cmn", 50, 150))
    assert len(slower) > 1.2 * len(first)
    assert not np.array_equal(first[:1000], tts.speak(text, Voice("cmn+f2", 65, 220))[:1000])
