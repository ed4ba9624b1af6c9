"""Audio: reading and checking files (``reading``), log-mel features and SpecAugment (``features``),
waveform augmentation (``augment``), the shared utterance data set and JSONL manifests (``speech``),
corpora in their own layouts (``layouts``: sidecar-transcript folders, FSDD; ``librispeech``), the
embedded eSpeak digits (``spoken_digits``) and the data modules (``modules``)."""
