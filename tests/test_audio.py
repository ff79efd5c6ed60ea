"""Audio through `noiseaug run`: exact arithmetic on each subtype's own grid."""

from __future__ import annotations

import json
import math
import time
import wave

import numpy as np
import pytest
import soundfile as sf

from conftest import records, tree, write_image

RATE = 16000


def tone(seconds: float = 1.0, channels: int = 1, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * 441 * t)
    return np.stack([mono * (0.9 ** c) for c in range(channels)], axis=1)


def int_read(path, dtype="int32"):
    return sf.read(path, dtype=dtype, always_2d=True)[0]


def run_audio(cli, tmp_path, files: dict[str, tuple], *args, out="out"):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for name, (signal, kwargs) in files.items():
        sf.write(src / name, signal, **kwargs)
    cli("run", src, tmp_path / out, "--workers", 1, *args)
    return src, tmp_path / out


def test_quiet_pcm16_residual_has_requested_sigma_and_no_flooring_bias(cli, tmp_path):
    quiet = tone(4.0, 2, amplitude=0.01)
    src, out = run_audio(cli, tmp_path, {"q.wav": (quiet, dict(samplerate=RATE, subtype="PCM_16"))},
                         "--audio-sigma", 0.002)
    r = (int_read(out / "q.wav", "int16").astype(np.float64) - int_read(src / "q.wav", "int16")) / 32768
    sigma = 0.002 * math.sqrt(1 + 1 / (12 * (0.002 * 32768) ** 2))  # rounding adds 1/12 LSB²
    assert abs(r.std() / sigma - 1) < 0.01
    assert abs(r.mean()) < 5 * sigma / math.sqrt(r.size)  # flooring would shift it by half an LSB


def test_pcm24_noise_lives_on_the_24_bit_grid(cli, tmp_path):
    src, out = run_audio(cli, tmp_path, {"d.wav": (tone(1.0), dict(samplerate=RATE, subtype="PCM_24"))},
                         "--audio-sigma", 1e-5)
    residual = (int_read(out / "d.wav") - int_read(src / "d.wav")) // 256  # in 24-bit steps
    assert np.all((int_read(out / "d.wav") % 256) == 0)
    assert np.count_nonzero(residual % 256) > 0.9 * residual.size  # not whole 16-bit steps
    assert abs(residual.std() / (1e-5 * 2**23) - 1) < 0.03


@pytest.mark.parametrize("name,subtype,fmt", [
    ("u8.wav", "PCM_U8", "WAV"), ("s8.aiff", "PCM_S8", "AIFF"), ("p16.wav", "PCM_16", "WAV"),
    ("p24.wav", "PCM_24", "WAV"), ("p32.wav", "PCM_32", "WAV"), ("f32.wav", "FLOAT", "WAV"),
    ("f64.wav", "DOUBLE", "WAV"), ("l.flac", "PCM_16", "FLAC"), ("l24.flac", "PCM_24", "FLAC"),
    ("c.caf", "PCM_24", "CAF"), ("w.w64", "PCM_16", "W64"), ("r.rf64", "PCM_24", "RF64"), ("s.au", "PCM_16", "AU"),
])
def test_sigma_zero_reproduces_every_sample(cli, tmp_path, name, subtype, fmt):
    signal = tone(0.5, 2, amplitude=0.7)
    src, out = run_audio(cli, tmp_path, {name: (signal, dict(samplerate=RATE, subtype=subtype, format=fmt))},
                         "--audio-sigma", 0)
    dtype = "float64" if subtype in ("FLOAT", "DOUBLE") else "int32"
    assert np.array_equal(int_read(out / name, dtype), int_read(src / name, dtype))
    info = sf.info(out / name)
    assert (info.format, info.subtype, info.samplerate, info.channels) == (fmt, subtype, RATE, 2)


def test_format_rate_channels_endianness_and_metadata_are_kept(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    with sf.SoundFile(src / "big.wav", "w", 22050, 3, "PCM_24", endian="BIG", format="WAV") as f:
        f.title, f.artist, f.comment, f.date = "Take 5", "Quartet", "room mic", "2026-01-02"
        f.write(tone(0.3, 3, rate=22050))
    with sf.SoundFile(src / "little.aiff", "w", 8000, 1, "PCM_16", endian="LITTLE", format="AIFF") as f:
        f.write(tone(0.3, 1, rate=8000))
    cli("run", src, tmp_path / "out", "--workers", 1)
    with sf.SoundFile(tmp_path / "out" / "big.wav") as f:
        assert (f.samplerate, f.channels, f.subtype, f.endian) == (22050, 3, "PCM_24", "BIG")
        meta = f.copy_metadata()
        assert {k: meta.get(k) for k in ("title", "artist", "comment", "date")} == {
            "title": "Take 5", "artist": "Quartet", "comment": "room mic", "date": "2026-01-02"}
    assert (tmp_path / "out" / "big.wav").read_bytes()[:4] == b"RIFX"
    with sf.SoundFile(tmp_path / "out" / "little.aiff") as f:
        assert (f.samplerate, f.endian, f.subtype) == (8000, "LITTLE", "PCM_16")


def test_snr_20_db_on_a_sine(cli, tmp_path):
    src, out = run_audio(cli, tmp_path, {"s.flac": (tone(3.0, 2, 0.5), dict(samplerate=RATE, subtype="PCM_24"))},
                         "--audio-snr-db", 20)
    x = sf.read(src / "s.flac", dtype="float64")[0]
    y = sf.read(out / "s.flac", dtype="float64")[0]
    snr = 10 * math.log10(np.mean(x**2) / np.mean((y - x) ** 2))
    assert abs(snr - 20) < 0.3
    _, [rec] = records(out / "noiseaug-manifest.jsonl")
    assert rec["snr_db"] == 20 and rec["sigma"] == pytest.approx(math.sqrt(np.mean(x**2)) / 10, rel=1e-3)


def test_noise_does_not_depend_on_block_size(cli, tmp_path, monkeypatch):
    from noiseaug import audio_io

    files = {"x.wav": (tone(2.0, 2), dict(samplerate=RATE, subtype="PCM_16")),
             "y.flac": (tone(1.0, 1), dict(samplerate=RATE, subtype="PCM_24"))}
    run_audio(cli, tmp_path, files, out="a")
    monkeypatch.setattr(audio_io, "BLOCK_BYTES", 4000)
    monkeypatch.setattr(audio_io, "MIN_BLOCK_FRAMES", 1000)
    run_audio(cli, tmp_path, files, out="b")
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_lossy_and_float_outputs_are_reproducible_byte_for_byte(cli, tmp_path):
    signal = tone(1.0, 2)
    files = {"v.ogg": (signal, dict(samplerate=RATE, subtype="VORBIS")),
             "o.opus": (tone(1.0, 2, rate=48000), dict(samplerate=48000, subtype="OPUS", format="OGG")),
             "m.mp3": (signal, dict(samplerate=RATE, subtype="MPEG_LAYER_III")),
             "f.wav": (signal, dict(samplerate=RATE, subtype="FLOAT")),
             "r.rf64": (signal, dict(samplerate=RATE, subtype="FLOAT", format="RF64")),  # a PEAK chunk whatever
             "d.rf64": (signal, dict(samplerate=RATE, subtype="DOUBLE", format="RF64"))}  # libsndfile is told
    src, _ = run_audio(cli, tmp_path, files, out="a")
    time.sleep(1.1)  # a clock time in a header would differ
    cli("run", src, tmp_path / "b", "--workers", 2)
    for name in files:
        a, b = (tmp_path / d / name for d in "ab")
        assert a.read_bytes() == b.read_bytes(), name
        assert sf.info(a).subtype == sf.info(src / name).subtype
        assert np.abs(sf.read(a)[0] - sf.read(src / name)[0]).std() > 0.003  # noised, still decodable
    assert b"PEAK" not in (tmp_path / "a" / "f.wav").read_bytes()


def test_six_channels_and_an_independent_decoder(cli, tmp_path):
    src, out = run_audio(cli, tmp_path, {"six.wav": (tone(0.5, 6), dict(samplerate=RATE, subtype="PCM_16"))})
    with wave.open(str(out / "six.wav")) as w:  # Python's own WAV reader, not libsndfile
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (6, 2, RATE)
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 6)
    assert np.array_equal(frames, int_read(out / "six.wav", "int16"))
    residual = frames.astype(np.float64) - int_read(src / "six.wav", "int16")
    assert all(abs(residual[:, c].std() / 327.68 - 1) < 0.05 for c in range(6))


def test_mixed_dataset_workers_1_and_2_agree_and_bad_audio_is_recorded(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(1.0, 2), RATE, subtype="PCM_24")
    sf.write(src / "b.flac", tone(1.0, 1), RATE)
    write_image(src / "c.png", np.full((20, 20, 3), 77, np.uint8))
    good = (src / "a.wav").read_bytes()
    (src / "cut.wav").write_bytes(good[: len(good) // 3])
    (src / "text.wav").write_bytes(b"RIFF but not really")
    r1 = cli("run", src, tmp_path / "w1", "--workers", 1, code=1)
    cli("run", src, tmp_path / "w2", "--workers", 2, code=1)
    t1, t2 = tree(tmp_path / "w1"), tree(tmp_path / "w2")
    for name in ("a.wav", "b.flac", "c.png"):
        assert t1[name] == t2[name]
    _, recs = records(tmp_path / "w1" / "noiseaug-manifest.jsonl")
    status = {r["input"]: r["status"] for r in recs}
    assert status == {"a.wav": "ok", "b.flac": "ok", "c.png": "ok", "cut.wav": "error", "text.wav": "error"}
    assert "truncated" in next(line for line in r1.stderr.splitlines() if "failed: cut.wav: " in line)
    assert "failed: text.wav: " in r1.stderr
    assert "cut.wav" not in t1 and "text.wav" not in t1


def test_audio_sigma_range_is_drawn_per_file(cli, tmp_path):
    files = {f"{i}.wav": (tone(0.2), dict(samplerate=RATE, subtype="PCM_16")) for i in range(4)}
    _, out = run_audio(cli, tmp_path, files, "--audio-sigma", "0.001:0.05")
    sigmas = [r["sigma"] for r in records(out / "noiseaug-manifest.jsonl")[1]]
    assert all(0.001 <= s <= 0.05 for s in sigmas) and len(set(sigmas)) == 4


def test_silent_recording_under_snr_gets_sigma_zero_and_a_warning(cli, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "quiet.wav", np.zeros((RATE, 1), np.int16), RATE, subtype="PCM_16")
    result = cli("run", src, tmp_path / "out", "--workers", 1, "--audio-snr-db", 20)
    assert "noiseaug: warning: quiet.wav: silent" in result.stderr
    _, [rec] = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    assert rec["status"] == "ok" and rec["sigma"] == 0 and rec["warning"].startswith("silent")
    assert (tmp_path / "out" / "quiet.wav").read_bytes() == (src / "quiet.wav").read_bytes()


@pytest.mark.parametrize("fmt", ["AU", "RF64", "W64", "WAV", "AIFF"])
def test_a_cut_recording_whose_header_declares_its_length_is_refused_as_truncated(cli, tmp_path, fmt):
    """libsndfile reads what is there of a cut file; the header said more, so the file is not passed off as good."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / f"whole.{fmt.lower()}", tone(1.0, 2), RATE, format=fmt, subtype="PCM_16")
    data = (src / f"whole.{fmt.lower()}").read_bytes()
    for fraction in (0.05, 0.5, 0.999):
        (src / f"cut{fraction}.{fmt.lower()}").write_bytes(data[: int(len(data) * fraction)])
    cli("run", src, tmp_path / "out", "--workers", 1, code=1)
    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    status = {r["input"]: (r["status"], r.get("error", "")) for r in recs}
    assert status.pop(f"whole.{fmt.lower()}") == ("ok", "")
    assert len(status) == 3 and all(s == "error" and "truncated" in e for s, e in status.values()), status


def test_a_cut_mp3_whose_header_declares_its_length_is_refused_as_truncated(cli, tmp_path):
    """libsndfile takes an MP3's frame count from its Xing header, then decodes what is there: a cut file was
    recorded ok, shorter. Whole files pass, an ID3v2 tag before the stream or not."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "whole.mp3", tone(1.0, 2), RATE, subtype="MPEG_LAYER_III")
    data = (src / "whole.mp3").read_bytes()
    tag = b"ID3\x04\x00\x00\x00\x00\x01\x00" + b"\x00" * 128  # an empty ID3v2.4 tag of 128 bytes
    (src / "tagged.mp3").write_bytes(tag + data)
    for fraction in (0.5, 0.97):
        (src / f"cut{fraction}.mp3").write_bytes(data[: int(len(data) * fraction)])
    (src / "tagged_cut.mp3").write_bytes(tag + data[: len(data) // 2])
    (src / "tagged_short.mp3").write_bytes(tag + data[:-100])  # short by less than its tag: the tag is no audio
    (src / "trailed.mp3").write_bytes(data + b"TAG" + bytes(125))  # an ID3v1 tag at the end
    (src / "trailed_short.mp3").write_bytes(data[:-1] + b"TAG" + bytes(125))
    cli("run", src, tmp_path / "out", "--workers", 1, code=1)
    _, recs = records(tmp_path / "out" / "noiseaug-manifest.jsonl")
    status = {r["input"]: (r["status"], r.get("error", "")) for r in recs}
    for whole in ("whole.mp3", "tagged.mp3", "trailed.mp3"):
        assert status.pop(whole) == ("ok", ""), whole
    assert len(status) == 5 and all(s == "error" and "truncated" in e for s, e in status.values()), status
    assert status["tagged_short.mp3"][1].endswith(f"declares {len(data)} bytes of audio, the file holds "
                                                  f"{len(data) - 100}")


@pytest.mark.parametrize("mode", [[], ["--audio-snr-db", "20"]])
def test_float_audio_with_a_nan_or_infinite_sample_is_refused_not_passed_through(cli, tmp_path, mode):
    """A NaN went into the output as it was (marked ok); with --audio-snr-db one infinite sample made sigma
    infinite and the record unwritable: a traceback, every run. Refused as such images are."""
    src = tmp_path / "in"
    src.mkdir()
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        signal = tone(0.5, 1, amplitude=0.5)
        signal[100] = bad
        sf.write(src / name, signal, RATE, subtype="FLOAT")
    sf.write(src / "fine.wav", tone(0.5, 1, amplitude=0.5), RATE, subtype="FLOAT")
    result = cli("run", src, tmp_path / "out", "--workers", 1, *mode, code=1)
    recs = {r["input"]: r for r in records(tmp_path / "out" / "noiseaug-manifest.jsonl")[1]}
    assert recs["fine.wav"]["status"] == "ok" and "Traceback" not in result.stderr
    for name in ("nan.wav", "inf.wav"):
        assert recs[name]["status"] == "error" and "not finite (NaN or infinity)" in recs[name]["error"]
        assert not (tmp_path / "out" / name).exists()


def _wav(samples: bytes, word: int, bits: int, extensible: bool) -> bytes:
    import struct

    align = word // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else 1, 1, RATE, RATE * align, align,
                      word if extensible else bits)
    if extensible:  # cbSize, valid bits, channel mask, SubFormat KSDATAFORMAT_SUBTYPE_PCM
        fmt += struct.pack("<HHI", 22, bits, 4) + bytes.fromhex("0100000000001000800000aa00389b71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_samples_narrower_than_their_words_and_chained_ogg_are_refused(cli, tmp_path):
    """libsndfile reads 12-bit PCM as PCM_16 and writes it back as 16-bit (the noise off the 12-bit grid), and
    decodes the first stream of a chained Ogg only: both were marked ok. Refused with the reason now."""
    src = tmp_path / "in"
    src.mkdir()
    signal = 0.3 * np.sin(np.arange(RATE) / 10)
    twelve = (np.round(signal * 2047).astype("<i2") << 4).tobytes()
    (src / "pcm12.wav").write_bytes(_wav(twelve, 16, 12, extensible=False))
    (src / "x12in16.wav").write_bytes(_wav(twelve, 16, 12, extensible=True))
    (src / "x24in32.wav").write_bytes(_wav((np.round(signal * 2**23).astype("<i4") << 8).tobytes(), 32, 24, True))
    (src / "x16in16.wav").write_bytes(_wav(np.round(signal * 32767).astype("<i2").tobytes(), 16, 16, True))
    sf.write(src / "aiff16.aiff", signal, RATE, subtype="PCM_16")
    data = bytearray((src / "aiff16.aiff").read_bytes())
    comm = data.find(b"COMM")
    data[comm + 14:comm + 16] = (12).to_bytes(2, "big")  # sampleSize 12, still in 16-bit words
    (src / "aiff12.aiff").write_bytes(bytes(data))
    for name, length in (("a.ogg", RATE), ("b.ogg", RATE // 2)):
        sf.write(tmp_path / name, signal[:length], RATE, format="OGG", subtype="VORBIS")
    (src / "chained.ogg").write_bytes((tmp_path / "a.ogg").read_bytes() + (tmp_path / "b.ogg").read_bytes())
    (src / "single.ogg").write_bytes((tmp_path / "a.ogg").read_bytes())
    sf.write(src / "w16.w64", signal, RATE, subtype="PCM_16", format="W64")
    wave64 = bytearray((src / "w16.w64").read_bytes())
    fmt = wave64.find(b"fmt ") + 24  # a Wave64 chunk: a 16-byte GUID and a 64-bit size before its body
    wave64[fmt + 14:fmt + 16] = (12).to_bytes(2, "little")
    (src / "w12.w64").write_bytes(bytes(wave64))
    cli("run", src, tmp_path / "out", "--workers", 1, code=1)
    recs = {r["input"]: r for r in records(tmp_path / "out" / "noiseaug-manifest.jsonl")[1]}
    assert {name: r["status"] for name, r in recs.items()} == {
        "pcm12.wav": "error", "x12in16.wav": "error", "x24in32.wav": "error", "aiff12.aiff": "error",
        "chained.ogg": "error", "x16in16.wav": "ok", "aiff16.aiff": "ok", "single.ogg": "ok", "w16.w64": "ok",
        "w12.w64": "error"}
    assert recs["pcm12.wav"]["error"] == "not supported: 12-bit samples in 16-bit words (libsndfile would write " \
                                        "them as 16-bit samples)"
    assert "24-bit samples in 32-bit words" in recs["x24in32.wav"]["error"]
    assert recs["chained.ogg"]["error"].startswith("not supported: Ogg holding 2 streams")


@pytest.mark.parametrize("channels,mask", [(2, 0x30), (2, 0x0), (4, 0x0), (2, 0x80000003), (1, 0x3)])
def test_a_wavex_keeps_its_channel_mask(cli, tmp_path, channels, mask):
    """Back-left and back-right (0x30) came out front-left and front-right; a mask of 0 (no speaker assignment:
    microphone arrays, ambisonics) came out as a speaker layout, and so did masks that do not fit the channel
    count. The output's mask is the input's, byte for byte."""
    import struct

    src = tmp_path / "in"
    src.mkdir()
    samples = np.round(0.2 * np.sin(np.arange(channels * RATE) / 9) * 32767).astype("<i2")
    wav = bytearray(_wav(samples.tobytes(), 16, 16, extensible=True))
    fmt = wav.find(b"fmt ") + 8
    wav[fmt + 2:fmt + 4], wav[fmt + 12:fmt + 14] = struct.pack("<H", channels), struct.pack("<H", 2 * channels)
    wav[fmt + 8:fmt + 12] = struct.pack("<I", RATE * 2 * channels)
    wav[fmt + 20:fmt + 24] = struct.pack("<I", mask)
    (src / "m.wav").write_bytes(bytes(wav))
    cli("run", src, tmp_path / "out", "--workers", 1)
    out = (tmp_path / "out" / "m.wav").read_bytes()
    at = out.find(b"fmt ") + 8
    assert struct.unpack("<HH", out[at:at + 4]) == (0xFFFE, channels)
    assert struct.unpack("<I", out[at + 20:at + 24]) == (mask,)
    assert sf.info(tmp_path / "out" / "m.wav").frames == RATE


def test_codecs_libsndfile_cannot_seek_in_are_read_once_from_the_start(cli, tmp_path):
    """GSM 6.10 and G.72x streams cannot seek: a fresh one was refused ("Seek attempted on unseekable file
    type") though it reads fine. Read once it is noised; a second pass (--audio-snr-db) says why it cannot be."""
    src = tmp_path / "in"
    src.mkdir()
    signal = 0.3 * np.sin(np.arange(8000) / 10)
    sf.write(src / "gsm.wav", signal, 8000, "GSM610", format="WAV")
    sf.write(src / "g723.au", signal, 8000, "G723_24", format="AU")
    cli("run", src, tmp_path / "out", "--workers", 1)
    recs = {r["input"]: r for r in records(tmp_path / "out" / "noiseaug-manifest.jsonl")[1]}
    for name in ("gsm.wav", "g723.au"):
        decoded = sf.read(tmp_path / "out" / name)[0]
        assert recs[name]["frames"] == sf.info(src / name).frames == decoded.shape[0]
        assert 0.005 < np.std(decoded - sf.read(src / name)[0]) < 0.05  # noised (σ 0.01), not silence
    result = cli("run", src, tmp_path / "snr", "--workers", 1, "--audio-snr-db", "20", code=1)
    assert "it cannot be read twice" in result.stderr


def test_a_broadcast_wav_keeps_its_bext_fields(cli, tmp_path):
    """A Broadcast WAV's bext chunk (description, originator, time reference, coding history) was dropped;
    libsndfile carries it now, and appends its own line to the coding history, as a processing step should."""
    from noiseaug import audio_io

    src = tmp_path / "in"
    src.mkdir()
    fields = bytearray(audio_io.BEXT_FIXED)
    fields[0:18], fields[256:264], fields[340:344] = b"Take 3, room tone.", b"Studio A", (480000).to_bytes(4, "little")
    with sf.SoundFile(src / "take.wav", "w", RATE, 1, "PCM_16", format="WAV") as out:
        sf._snd.sf_command(out._file, audio_io.SFC_SET_BROADCAST_INFO, sf._ffi.from_buffer(fields), len(fields))
        out.write(tone(0.5, 1, amplitude=0.5))
    cli("run", src, tmp_path / "out", "--workers", 1)

    def bext(path):
        data = path.read_bytes()
        at = data.find(b"bext")
        return data[at + 8:at + 8 + int.from_bytes(data[at + 4:at + 8], "little")]

    before, after = bext(src / "take.wav"), bext(tmp_path / "out" / "take.wav")
    assert before[:18] == b"Take 3, room tone." and after[:602] == before[:602]  # every fixed field
    assert after[602:].startswith(before[602:]) and len(after) > len(before)  # its history, and one more line


def test_cue_points_and_sampler_loops_are_kept(cli, tmp_path):
    """A WAV's cue points (cue chunk) and sampler loops (smpl) were dropped; libsndfile reads and writes them
    as structs, carried byte for byte (the frames do not move, so the positions still hold)."""
    from noiseaug import audio_io

    (get_cue, set_cue, cue_size), (get_inst, set_inst, inst_size) = audio_io.STRUCTS
    cues = bytearray(cue_size)
    cues[0:4] = (2).to_bytes(4, "little")
    for i, position in enumerate((1000, 5000)):
        at = 4 + i * 280
        cues[at:at + 8] = (i + 1).to_bytes(4, "little") + position.to_bytes(4, "little")
        cues[at + 8:at + 12], cues[at + 20:at + 24] = b"data", position.to_bytes(4, "little")
    loops = bytearray(inst_size)
    loops[4], loops[12:16] = 60, (1).to_bytes(4, "little")  # base note, one loop from 100 to 8000
    loops[16:28] = b"".join(v.to_bytes(4, "little") for v in (1, 100, 8000))
    src = tmp_path / "in"
    src.mkdir()
    with sf.SoundFile(src / "s.wav", "w", RATE, 1, "PCM_16", format="WAV") as out:
        for command, data in ((set_cue, cues), (set_inst, loops)):
            assert sf._snd.sf_command(out._file, command, sf._ffi.from_buffer(data), len(data))
        out.write(tone(0.5, 1, amplitude=0.5))
    cli("run", src, tmp_path / "out", "--workers", 1)

    def chunk(path, kind):
        data = path.read_bytes()
        at = data.find(kind)
        return data[at + 8:at + 8 + int.from_bytes(data[at + 4:at + 8], "little")] if at > 0 else None

    for kind in (b"cue ", b"smpl"):
        assert chunk(src / "s.wav", kind) is not None and chunk(tmp_path / "out" / "s.wav", kind) == \
            chunk(src / "s.wav", kind), kind


def test_the_snr_bounds_hold_for_preview_too_and_an_extreme_one_warns_nothing(cli, tmp_path):
    """preview refused a negative --audio-snr-db that run takes; at -1000 dB sigma overflows float32, which
    numpy said on stderr (the samples clip to full scale, as they should)."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "f.wav", tone(0.5, 1, amplitude=0.5), RATE, subtype="FLOAT")
    cli("preview", src / "f.wav", "-o", tmp_path / "p.png", "--audio-snr-db=-5")
    result = cli("run", src, tmp_path / "out", "--workers", 1, "--audio-snr-db=-1000")
    assert "Warning" not in result.stderr
    assert np.abs(sf.read(tmp_path / "out" / "f.wav")[0]).min() == 1.0  # every sample at full scale


def test_an_snr_beyond_what_a_double_holds_is_refused_before_anything_runs(cli, tmp_path):
    (tmp_path / "in").mkdir()
    result = cli("run", tmp_path / "in", tmp_path / "out", "--audio-snr-db=7000", code=2)
    assert "--audio-snr-db must lie within" in result.stderr and not (tmp_path / "out").exists()


def test_float_audio_beyond_full_scale_is_clipped_and_said(cli, tmp_path):
    """SPEC §3 clips FLOAT and DOUBLE audio to [-1, 1]: a recording louder than that loses its level, which
    the record and stderr say (a silent change marked ok without a word would not be)."""
    loud = np.clip(tone(0.5, 1, amplitude=1.0) * 1.5, -1.5, 1.5)
    files = {"loud.wav": (loud, dict(samplerate=RATE, subtype="DOUBLE")),
             "fine.wav": (tone(0.5, 1, amplitude=0.9), dict(samplerate=RATE, subtype="FLOAT"))}
    src = tmp_path / "in"
    src.mkdir()
    for name, (signal, kwargs) in files.items():
        sf.write(src / name, signal, **kwargs)
    result = cli("run", src, tmp_path / "out", "--workers", 1)
    assert "loud.wav: float samples beyond full scale (up to 1.5) were clipped" in result.stderr
    recs = {r["input"]: r for r in records(tmp_path / "out" / "noiseaug-manifest.jsonl")[1]}
    assert "clipped to [-1, 1]" in recs["loud.wav"]["warning"] and "warning" not in recs["fine.wav"]
    assert recs["loud.wav"]["clipped_fraction"] > 0.2 and np.abs(sf.read(tmp_path / "out" / "loud.wav")[0]).max() <= 1
    assert "1 output(s) written with a warning" in result.stderr
    again = cli("run", src, tmp_path / "again", "--workers", 1, "--json")  # counted in --json too (one object)
    assert json.loads(again.stdout)["warnings"] == 1
