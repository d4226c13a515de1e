"""Speech: the commentary spoken live, as one more sink of commentary lines.

    voice (text -> samples) -> Speaker (the live pacing rule) -> outputs (a sound device, a WAV file
    on the stream's clock, a recording's audio track)

- `voices.py`: the voices by name and licence, checked without loading anything (`voice_names`,
  `check_voice`, `open_voice`); `voice.py`: the `Voice` interface every voice meets.
- `espeak.py`: eSpeak NG, always available offline; run as a program (GPL stays out of our process).
- `pocket.py`: Kyutai's Pocket TTS, the neural voice (optional extra `streamvlm[speech]`); its
  weights come from the hub on first use through `core.download.fetch`.
- `speaker.py`: the live pacing rule (a line is spoken as soon as it comes; at most one newer line
  waits, a still newer one replaces it; silent seconds are not spoken) and its counters.
- `clock.py`: the stream's clock (stream seconds now), set from the first frame.
- `output.py`: a sound output device through sounddevice; `wav.py`: the WAV of what was spoken.
- `samples.py`: float32 mono samples: resampling, reading a WAV.

Nothing here imports the engine or the media wing: the pipeline (core/pipeline.py) puts speech
together with a run.
"""
