from harness.paths import cache_dir


def test_cache_dir_follows_a_symlink_and_recreates_a_missing_target(tmp_path, monkeypatch):
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "gone" / "real")
    monkeypatch.setenv("HARNESS_CACHE", str(link))
    d = cache_dir()
    assert d == (tmp_path / "gone" / "real") and d.is_dir()
