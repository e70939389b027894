"""extractors/weights.py: a missing weights file's error says which file, where it goes and the command that
fetches it; `extract` itself never downloads (jobs stay off the network)."""
import shlex

from visfeat.cli import build_parser, main


def test_extract_without_weights_names_the_file_the_place_and_the_fetch_command(sample_dir, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)  # the default place, resources/weights/, is relative to the working folder
    code = main(["extract", "--preset", "clip-vit-b32", "--images", str(sample_dir), "--out", "o.h5", "--device",
                 "cpu"])
    err = capsys.readouterr().err
    dest = "resources/weights/clip-vit-b32/ViT-B-32.pt"
    command = f"visfeat fetch-weights --preset clip-vit-b32 --dest {dest}"
    assert code == 2 and err.count("\n") == 1 and err.startswith("visfeat extract: error: weights for preset")
    assert f"`{command}`" in err and "place ViT-B-32.pt (sha256 " in err and f" at {dest} " in err
    args = build_parser().parse_args(shlex.split(command)[1:])  # the command as printed is one visfeat runs
    assert (args.cmd, args.preset, args.dest) == ("fetch-weights", "clip-vit-b32", dest)
    assert not (tmp_path / "resources").exists() and not (tmp_path / "o.h5").exists()  # nothing fetched
