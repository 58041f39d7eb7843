"""``--no-tf32`` / ``backends.set_tf32``: the CUDA float32 precision flags are set (they exist on CPU builds too)."""


from sde_diffusion.backends import set_tf32, tf32_state


def test_set_tf32_round_trip():
    before = tf32_state()
    try:
        set_tf32(False)
        off = tf32_state()
        assert all(v in ("ieee", False) for v in off.values()), off
        set_tf32(True)
        on = tf32_state()
        assert all(v in ("tf32", True) for v in on.values()), on
    finally:
        set_tf32(all(v in ("tf32", True) for v in before.values()))


def test_cli_no_tf32_flag(tmp_path):
    from sde_diffusion.cli import main

    before = tf32_state()
    try:
        set_tf32(True)
        rc = main(["sample", "--model", "digits", "--solver", "ddim", "--steps", "2", "-n", "2", "--no-tf32",
                   "--no-progress", "--out", str(tmp_path / "s.png")])
        assert rc in (0, None)
        assert all(v in ("ieee", False) for v in tf32_state().values())
    finally:
        set_tf32(all(v in ("tf32", True) for v in before.values()))
