"""backends.py: every ecosystem's spelling parses; the capability table says what runs where."""

import pytest

from nvfp4_kit.backends import (
    CAPABILITIES,
    Fp4GemmBackend,
    Fp4QuantBackend,
    arch_family,
    is_backend_supported,
)


@pytest.mark.parametrize("name,member", [
    ("cute-dsl", Fp4GemmBackend.FLASHINFER_CUTEDSL),          # FlashInfer mm_fp4(backend=)
    ("flashinfer_cutedsl", Fp4GemmBackend.FLASHINFER_CUTEDSL),  # SGLang / vLLM
    ("trtllm", Fp4GemmBackend.FLASHINFER_TRTLLM),
    ("nvfp4_kit", Fp4GemmBackend.NVFP4_KIT),
    ("NVFP4-KIT", Fp4GemmBackend.NVFP4_KIT),
    ("marlin", Fp4GemmBackend.MARLIN),
    (Fp4GemmBackend.REFERENCE, Fp4GemmBackend.REFERENCE),
])
def test_parse_any_spelling(name, member):
    assert Fp4GemmBackend.parse(name) is member


def test_parse_error_lists_every_valid_name():
    with pytest.raises(ValueError) as info:
        Fp4GemmBackend.parse("cublas")
    text = str(info.value)
    for expected in ("cute-dsl", "flashinfer_cutedsl", "nvfp4_kit", "reference", "marlin"):
        assert expected in text


def test_every_member_has_engine_names():
    for member in Fp4GemmBackend:
        assert member.names is not None and member.value in member.all_names()
    for member in Fp4QuantBackend:
        assert member.names is not None
    assert Fp4GemmBackend.FLASHINFER_CUTEDSL.names.flashinfer == "cute-dsl"
    assert Fp4QuantBackend.parse("cute-dsl") is Fp4QuantBackend.FLASHINFER_CUTEDSL


@pytest.mark.parametrize("cap,family", [(None, "cpu"), ((9, 0), "sm90"), ((10, 0), "sm100"),
                                        ((10, 3), "sm100"), ((8, 0), "defer"), ((8, 9), "defer"),
                                        ((12, 0), "defer")])
def test_arch_family(cap, family):
    assert arch_family(cap) == family


def test_capability_table_says_why_and_what_ran():
    assert CAPABILITIES["sm90"].gemm[0] is Fp4GemmBackend.NVFP4_KIT
    assert CAPABILITIES["sm100"].gemm[0] is Fp4GemmBackend.FLASHINFER_CUTEDSL
    assert not CAPABILITIES["sm100"].executed_here
    assert Fp4GemmBackend.REFERENCE not in CAPABILITIES["defer"].gemm  # never our slow path on a GPU
    for support in CAPABILITIES.values():
        assert len(support.why) > 40


def test_is_backend_supported():
    assert is_backend_supported("nvfp4_kit", (9, 0))
    assert not is_backend_supported("nvfp4_kit", (10, 0))
    assert is_backend_supported("cute-dsl", (10, 0))
    assert not is_backend_supported("cute-dsl", None)
