"""espnet_llm.benchmarks.recipe_logs: the step time, peak memory and decoding RTF of a run, from its logs."""
from espnet_llm.benchmarks.recipe_logs import decoding_rtfs, main, training_figures

EPOCH = ("[gpu] 2026-12-07 20:13:19,048 (trainer:394) INFO: {n}epoch results: [train] iter_time=0.005, "
         "forward_time=0.112, loss=5.730, optim0_lr0=0.001, train_time={t}, time=1 minute and 9.67 seconds, "
         "total_count={c}, gpu_max_cached_mem_GB={m}, [valid] loss=5.257, acc=0.168, time=1.05 seconds, total_count=7")


def test_the_last_epoch_and_the_slowest_decoding_job_are_read(tmp_path, capsys):
    run = tmp_path / "exp" / "decoder_only" / "short"
    run.mkdir(parents=True)
    (run / "train.log").write_text(EPOCH.format(n=1, t=0.5, c=10, m=30.1) + "\n" + EPOCH.format(n=2, t=0.25, c=20, m=31.5)
                                   + "\n")
    for job, rtf in ((1, "0.0021"), (2, "0.0035")):
        log = run / "decode_speech_llm_valid.acc_current.ave" / "test" / "logdir" / f"inference.{job}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"... INFO: done: 50 utterances in 1.2 s (RTF {rtf}); 0 broken; 0 outputs repaired\n")
    assert training_figures(run / "train.log") == {"epoch": 2, "steps": 10.0, "step_s": 0.25, "peak_GB": 31.5}
    assert decoding_rtfs(run) == {"test": 0.0035}
    main([str(run)])
    assert "| decoder_only/short | 10 | 0.250 | 31.5 | test 0.0035 |" in capsys.readouterr().out
    # decoded a second way (asr.sh's inference tag): each decoding's sets named apart
    log = run / "decode_speech_llm_beam_size1_valid.acc_current.ave" / "test" / "logdir" / "inference.1.log"
    log.parent.mkdir(parents=True)
    log.write_text("... INFO: done: 50 utterances in 0.4 s (RTF 0.0010); 0 broken; 0 outputs repaired\n")
    assert decoding_rtfs(run) == {"decode_speech_llm_beam_size1_valid.acc_current.ave/test": 0.0010,
                                  "decode_speech_llm_valid.acc_current.ave/test": 0.0035}
