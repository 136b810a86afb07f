"""Shared test fixtures, and which tests are ``slow``.

``pytest -m "not slow"`` is the quick loop; CI (``scripts/test.sh``) runs everything.
"""
import pytest
import torch

# Tests that take more than about five seconds on the project's 2-core CPU (``pytest --durations=30``),
# named here rather than decorated where they stand; a name that no longer exists is an error.
SLOW_TESTS = {
    "test_models.py": ("test_torch_compile",),  # TorchDynamo's import and a compilation
    "test_faults.py": ("test_random_sigkill_resumes_bit_identical", "test_kills_inside_the_checkpoint_write",
                       "test_disk_faults_refused_with_the_path", "test_damaged_and_nonfinite_checkpoints_refused",
                       "test_second_writer_refused"),  # child processes that train
    "test_analysis.py": ("test_cli_gradients_over_the_whole_training_split",),  # 5,000 images, twice backward
    "test_study.py": ("test_demo_end_to_end", "test_ctrl_c_in_a_study_says_to_rerun_the_study"),
    "test_train.py": ("test_resume_after_sigkill_is_bit_identical", "test_he2016_warmup_ends_on_training_error"),
    "test_distributed.py": ("test_sync_batch_norm_is_batch_norm_of_the_whole_batch",  # processes importing torch
                            "test_two_processes_with_sync_bn_match_one_process_of_the_same_batch",
                            "test_killing_torchrun_stops_its_workers"),
}
# Fixtures that run something long once per module: every test that uses one is slow.
SLOW_FIXTURES = ("tiny_study",)


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by -m
def pytest_collection_modifyitems(config, items):
    modules = {}
    for item in items:
        listed = SLOW_TESTS.get(item.path.name, ())
        if getattr(item, "originalname", item.name) in listed or set(SLOW_FIXTURES) & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if listed and getattr(item, "module", None) is not None:
            modules[item.path.name] = item.module
    for file, module in modules.items():
        gone = [name for name in SLOW_TESTS[file] if not hasattr(module, name)]
        if gone:
            raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names {', '.join(gone)}, not in tests/{file}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine their spin-waits cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
