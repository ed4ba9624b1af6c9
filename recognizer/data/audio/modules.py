"""Speech data modules (``recognizer/conf/data/{spoken_digits,audio_manifest,audio_folder,fsdd,librispeech}.yaml``).

They follow the contract of :mod:`recognizer.data.images.modules`; ``height`` is the number of mel bins,
so any model that reads ``${data.height}`` (the CRNN too) takes spectrograms with time as width.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recognizer.data.audio.augment import WaveAugment
from recognizer.data.audio.features import LogMel, SpecAugment
from recognizer.data.audio.layouts import check_mboshi_options, read_fsdd, read_sidecar_folder, split_mboshi
from recognizer.data.audio.librispeech import read_librispeech
from recognizer.data.audio.speech import AudioDataset, AudioRecord, filter_duration, read_audio_manifest
from recognizer.data.audio.spoken_digits import ensure_spoken_digits, spoken_digits_manifests
from recognizer.data.base import SplitData
from recognizer.data.batching import Batch
from recognizer.data.images.lines import DataError


class AudioManifestData(SplitData):
    """A user's audio with NeMo-style JSONL manifests (``recognizer/conf/data/audio_manifest.yaml``).

    Args:
        train, val, test: a ``.jsonl`` manifest per split (or None).
        sample_rate: the model's audio rate (Hz); other rates are resampled when ``resample``.
        n_mels, win_ms, hop_ms, n_fft, log_floor, normalize, top_db: the log-mel front end (:class:`LogMel`).
        height: must equal ``n_mels`` (the configs set it by interpolation; models read it).
        resample: resample files at another rate; False makes such a file an error.
        min_duration, max_duration: keep utterances within these durations (seconds; None = no limit).
        spec_augment: masking applied to the train split only, or None.
        wave_augment: speed and noise perturbation of the train split's recordings (used only if
            ``wave_augment.enabled``), or None.
        cache: keep computed features in memory (fp16) after their first load.
        pad_ms: silence added before and after every recording (ms); 0 = none.
        max_missing_ms: a WAV at most this much shorter than its header declares is read as the audio it
            holds (Mboshi's corpus); 0 = any shortfall is a truncated file.
        alphabet: optional alphabet file (one symbol per line); default: the train transcripts.
        batch_size, num_workers, pin_memory, persistent_workers: loader settings (:class:`SplitData`).
    """

    def __init__(
        self,
        train: str | None,
        val: str | None,
        test: str | None = None,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: int | None = None,
        log_floor: float = 1e-6,
        normalize: str = "per_feature",
        top_db: float | None = None,
        height: int | None = None,
        resample: bool = True,
        min_duration: float | None = None,
        max_duration: float | None = None,
        spec_augment: SpecAugment | None = None,
        wave_augment: WaveAugment | None = None,
        cache: bool = False,
        pad_ms: float = 0.0,
        max_missing_ms: float = 0.0,
        alphabet: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        if height is not None and height != n_mels:
            raise ValueError(f"data.height={height} must equal data.n_mels={n_mels} for audio (set only n_mels)")
        sources = {"train": train, "val": val, "test": test}
        super().__init__(sources, alphabet, batch_size, num_workers, pin_memory, persistent_workers)
        self.sample_rate = sample_rate
        self.height = n_mels
        self.features = LogMel(sample_rate, n_mels, win_ms, hop_ms, n_fft, log_floor, normalize, top_db)
        self.resample = resample
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.spec_augment = spec_augment
        self.wave_augment = wave_augment if wave_augment is not None and wave_augment.enabled else None
        self.cache = cache
        self.pad_ms = pad_ms
        self.max_missing_ms = max_missing_ms

    @property
    def train_augment(self) -> Callable[[Batch], Batch] | None:
        """SpecAugment on whole train batches, applied by the loop in the main process (None: off)."""
        return None if self.spec_augment is None else self.spec_augment.batch

    def records(self, split: str) -> list[AudioRecord]:
        source = self.sources.get(split)
        if source is None:
            raise DataError(f"no {split} data configured: set data.{split}=PATH to a .jsonl manifest")
        return read_audio_manifest(source)

    def dataset(self, split: str) -> AudioDataset:
        everything = self.records(split)
        records = filter_duration(
            everything, self.min_duration, self.max_duration, f"{split} data", warn=split != "train"
        )
        dataset = AudioDataset(
            records,
            self.features,
            self.sample_rate,
            resample=self.resample,
            cache=self.cache,
            pad_ms=self.pad_ms,
            augment=self.wave_augment if split == "train" else None,  # the train loader applies it
            max_missing_ms=self.max_missing_ms,
        )
        if len(records) < len(everything):  # reported with the audit's counts of this split
            dataset.filtered = {"duration": len(everything) - len(records)}
        return dataset


class SpokenDigitsData(AudioManifestData):
    """Embedded spoken digit strings, synthesised with eSpeak NG into ``root`` on first use.

    Args:
        root: cache folder (``${paths.data_dir}/spoken_digits``).
        num_train, num_val, num_test: utterances per split (test voices are held out).
        max_digits: each utterance holds 1..max_digits digits.
        seed: generation seed.
        train, val, test: must stay None: the generator writes the manifests.
        Other arguments: as in :class:`AudioManifestData`.
    """

    def __init__(
        self,
        root: str,
        num_train: int = 3000,
        num_val: int = 300,
        num_test: int = 300,
        max_digits: int = 5,
        seed: int = 0,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        **kwargs,
    ) -> None:
        if train or val or test:
            raise ValueError("data=spoken_digits writes its own manifests: use data=audio_manifest for your files")
        super().__init__(None, None, None, **kwargs)
        self.root = Path(root)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.max_digits = max_digits
        self.seed = seed

    def has(self, split: str) -> bool:
        return self.sizes.get(split, 0) > 0

    def is_generated(self) -> bool:
        """Whether the cache already holds every split of these settings (nothing to synthesise)."""
        manifests = spoken_digits_manifests(self.root, self.sizes, self.max_digits, self.sample_rate, self.seed)
        return all(manifests[s].is_file() for s, n in self.sizes.items() if n > 0)

    def records(self, split: str) -> list[AudioRecord]:
        if not self.sources["train"]:  # generate lazily: instantiating the config stays cheap
            manifests = ensure_spoken_digits(self.root, self.sizes, self.max_digits, self.sample_rate, self.seed)
            self.sources.update({k: str(v) for k, v in manifests.items()})
        return super().records(split)


class LibriSpeechData(AudioManifestData):
    """A LibriSpeech copy in its original layout (``recognizer/conf/data/librispeech.yaml``).

    Args:
        root: the ``LibriSpeech`` folder holding the subset folders.
        train, val, test: subset names per split (e.g. ``[train-clean-100]``, ``[dev-clean]``); empty = none.
        lowercase: lower-case the transcripts (LibriSpeech's are upper case).
        Other arguments: as in :class:`AudioManifestData`.
    """

    def __init__(
        self,
        root: str,
        train: list[str],
        val: list[str],
        test: list[str] | None = None,
        lowercase: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(None, None, None, **kwargs)
        self.root = root
        self.subsets = {"train": list(train), "val": list(val), "test": list(test or [])}
        self.lowercase = lowercase

    def has(self, split: str) -> bool:
        return bool(self.subsets.get(split))

    def records(self, split: str) -> list[AudioRecord]:
        if not self.has(split):
            raise DataError(f"no {split} subsets configured: set data.{split}=[SUBSET, ...] (e.g. dev-clean)")
        return read_librispeech(self.root, self.subsets[split], self.lowercase)


class AudioFolderData(AudioManifestData):
    """Folders of recordings with a sidecar transcript per file (``recognizer/conf/data/audio_folder.yaml``).

    Args:
        train, val, test: a folder per split (or None), searched recursively for ``*{audio_ext}``.
        audio_ext: the recordings' extension (``.wav``, ``.flac``, ...).
        transcript_ext: the transcripts' extension: ``.txt`` for ``NAME.wav`` + ``NAME.txt``,
            ``.mb.cleaned`` for Mboshi's ``NAME.wav`` + ``NAME.mb.cleaned``.
        root: a folder that relative ``train``/``val``/``test`` paths are under (a corpus checkout,
            ``recognizer/conf/data/mboshi.yaml``), or None: they are used as given.
        Other arguments: as in :class:`AudioManifestData`.
    """

    def __init__(
        self,
        train: str | None,
        val: str | None,
        test: str | None = None,
        audio_ext: str = ".wav",
        transcript_ext: str = ".txt",
        root: str | None = None,
        **kwargs,
    ) -> None:
        if root is not None:  # an absolute split path stays as it is (Path's join keeps it)
            train, val, test = (None if p is None else str(Path(root) / p) for p in (train, val, test))
        super().__init__(train, val, test, **kwargs)
        self.audio_ext = audio_ext
        self.transcript_ext = transcript_ext

    def records(self, split: str) -> list[AudioRecord]:
        source = self.sources.get(split)
        if source is None:
            raise DataError(f"no {split} data configured: set data.{split}=FOLDER of recordings and transcripts")
        return read_sidecar_folder(source, self.audio_ext, self.transcript_ext, self.max_missing_ms)


class MboshiData(AudioFolderData):
    """The Mboshi-French corpus in its own layout (``recognizer/conf/data/mboshi.yaml``), with a validation
    split carved out of train so that the corpus's ``dev`` is scored only once, as test.

    Args:
        root: the corpus checkout.
        train_dir, dev_dir: its two folders of ``NAME.wav`` + ``NAME{transcript_ext}`` (relative to ``root``).
        scheme, val_fraction, test_speaker, split_seed: how the splits are drawn (:func:`split_mboshi`).
        train, val, test: must stay None: the scheme defines the splits.
        Other arguments: as in :class:`AudioFolderData`.
    """

    def __init__(
        self,
        root: str,
        train_dir: str = "full_corpus_newsplit/train",
        dev_dir: str = "full_corpus_newsplit/dev",
        scheme: str = "utterance",
        val_fraction: float = 0.1,
        test_speaker: str = "martial",
        split_seed: int = 0,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        **kwargs,
    ) -> None:
        if train or val or test:
            raise ValueError(
                "data=mboshi defines its splits by data.scheme: use data=audio_folder for your own folders"
            )
        check_mboshi_options(scheme, val_fraction)
        super().__init__(train_dir, None, dev_dir, root=root, **kwargs)
        self.scheme, self.val_fraction, self.test_speaker, self.split_seed = (
            scheme,
            val_fraction,
            test_speaker,
            split_seed,
        )
        self._splits: dict[str, list[AudioRecord]] | None = None

    def has(self, split: str) -> bool:
        return split in ("train", "val", "test")

    def records(self, split: str) -> list[AudioRecord]:
        if self._splits is None:
            train, dev = (super(MboshiData, self).records(s) for s in ("train", "test"))
            self._splits = split_mboshi(train, dev, self.scheme, self.val_fraction, self.test_speaker, self.split_seed)
        return self._splits[split]


class FSDDData(AudioManifestData):
    """The Free Spoken Digit Dataset in its own layout (``recognizer/conf/data/fsdd.yaml``); transcripts are words.

    Args:
        root: the FSDD checkout (holding ``recordings/{digit}_{speaker}_{index}.wav``).
        scheme: ``standard`` (test = indices 0–4 of every speaker, the dataset's split) or
            ``speaker`` (test = every recording of ``test_speaker``).
        test_speaker: the held-out speaker of the ``speaker`` scheme.
        val_indices: ``[first, last]`` indices (inclusive) of the training pool kept for validation.
        train, val, test: must stay None: the scheme defines the splits.
        Other arguments: as in :class:`AudioManifestData`.
    """

    def __init__(
        self,
        root: str,
        scheme: str = "standard",
        test_speaker: str = "theo",
        val_indices: tuple[int, int] = (5, 9),
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        **kwargs,
    ) -> None:
        if train or val or test:
            raise ValueError("data=fsdd defines its splits by data.scheme: use data=audio_manifest for your own lists")
        super().__init__(None, None, None, **kwargs)
        self.root = root
        self.scheme = scheme
        self.test_speaker = test_speaker
        self.val_indices = (int(val_indices[0]), int(val_indices[1]))

    def has(self, split: str) -> bool:
        return split in ("train", "val", "test")

    def records(self, split: str) -> list[AudioRecord]:
        return read_fsdd(self.root, split, self.scheme, self.test_speaker, self.val_indices)
