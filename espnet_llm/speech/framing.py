"""Whisper's fixed framing of audio, without torch: the recipe's planning reads it without loading torch (4 s)."""
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
MAX_SECONDS = 30
MAX_SAMPLES = MAX_SECONDS * SAMPLE_RATE  # 480000
MAX_FRAMES = MAX_SAMPLES // HOP_LENGTH  # 3000
# 50: 100 log-mel frames a second, halved by the encoder's stride-2 convolution
WHISPER_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH // 2
