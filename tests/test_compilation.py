"""config.compilation_cache_dir: where JAX keeps compiled programs."""

import os

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from ban_jax.runtime import compilation


@pytest.fixture
def no_jax_cache():
  """No cache set through JAX (conftest sets one), restored afterwards."""
  before = jax.config.jax_compilation_cache_dir
  min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_compilation_cache_dir", None)
  jax_cache.reset_cache()
  compilation._set_here = None
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
    jax_cache.reset_cache()
    compilation._set_here = None


def test_cache_path_relative_absolute_home_and_off(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compilation.cache_path("compile_cache", tmp_path / "run") == (
      tmp_path / "run" / "compile_cache")
  assert compilation.cache_path(str(tmp_path / "shared"), "run") == (
      tmp_path / "shared")
  assert compilation.cache_path("~/xla", "run") == tmp_path / "home" / "xla"
  monkeypatch.setenv("BAN_JAX_TEST_CACHE", str(tmp_path / "scratch"))
  assert compilation.cache_path("$BAN_JAX_TEST_CACHE/xla", "run") == (
      tmp_path / "scratch" / "xla")
  assert compilation.cache_path("", tmp_path) is None


def test_a_cache_set_through_jax_takes_precedence(tmp_path):
  ours = jax.config.jax_compilation_cache_dir  # Set by conftest.
  assert ours
  assert compilation.enable("compile_cache", tmp_path) == ours
  assert jax.config.jax_compilation_cache_dir == ours
  assert not (tmp_path / "compile_cache").exists()


def test_enable_writes_compiled_programs_into_the_workdir(
    tmp_path, no_jax_cache):  # pylint: disable=unused-argument
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  folder = tmp_path / "compile_cache"
  assert compilation.enable("compile_cache", tmp_path) == str(folder)
  assert jax.config.jax_compilation_cache_dir == str(folder)
  # A program never compiled in this process before (its constant is new).
  jax.jit(lambda x: x * 3.25 + 17.0)(jnp.ones(3)).block_until_ready()
  assert os.listdir(folder)

  # A second run in the same process may move the cache, or turn it off,
  # and JAX follows: new programs go to the new folder, then to none.
  other = tmp_path / "other"
  assert compilation.enable(str(other), tmp_path) == str(other)
  assert jax.config.jax_compilation_cache_dir == str(other)
  jax.jit(lambda x: x * 4.25 + 19.0)(jnp.ones(3)).block_until_ready()
  written = os.listdir(other)
  assert written
  assert compilation.enable("", tmp_path) is None
  assert jax.config.jax_compilation_cache_dir is None
  jax.jit(lambda x: x * 5.25 + 23.0)(jnp.ones(3)).block_until_ready()
  assert os.listdir(other) == written


def test_enable_makes_missing_parents_and_reuses_a_folder(
    tmp_path, no_jax_cache):  # pylint: disable=unused-argument
  folder = tmp_path / "caches" / "xla"
  for _ in range(2):  # A rerun finds the folder there: no error.
    assert compilation.enable("caches/xla", tmp_path) == str(folder)
    assert folder.is_dir()


def test_a_folder_that_cannot_be_made_is_a_warning_and_no_cache(
    tmp_path, no_jax_cache, caplog):  # pylint: disable=unused-argument
  compilation.enable("cache", tmp_path)  # An earlier run's cache is dropped.
  (tmp_path / "a_file").write_text("")
  assert compilation.enable("a_file/cache", tmp_path) is None
  assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
         ] == [f"config.compilation_cache_dir='a_file/cache': cannot make "
               f"{tmp_path / 'a_file' / 'cache'} ([Errno 20] Not a directory: "
               f"'{tmp_path / 'a_file' / 'cache'}'); compiling without a cache. Name "
               "a folder you can write, or '' to silence this."]
  assert jax.config.jax_compilation_cache_dir is None
