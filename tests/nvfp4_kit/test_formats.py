"""formats.py: nibble packing, the e2m1 table and the 128x4 scale swizzle."""

import pytest
import torch

from nvfp4_kit import formats as F


def test_e2m1_table_values():
    codes = torch.arange(16, dtype=torch.uint8)
    values = F.e2m1_to_float(codes)
    assert values[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert values[8:].tolist() == [-0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    assert torch.signbit(values[8])


def test_pack_puts_even_element_in_low_nibble():
    codes = torch.tensor([[0x1, 0x2, 0xF, 0x7]], dtype=torch.uint8)
    packed = F.pack_e2m1(codes)
    assert packed.tolist() == [[0x21, 0x7F]]
    assert torch.equal(F.unpack_e2m1(packed), codes)


def test_pack_round_trip_random():
    codes = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    assert torch.equal(F.unpack_e2m1(F.pack_e2m1(codes)), codes)


def test_pack_rejects_odd_k_and_unpack_rejects_dtype():
    with pytest.raises(ValueError, match="codes: last dim 3"):
        F.pack_e2m1(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="packed: dtype"):
        F.unpack_e2m1(torch.zeros(2, 3, dtype=torch.int32))


@pytest.mark.parametrize("rows,kb", [(1, 1), (5, 4), (127, 3), (128, 4), (129, 9), (300, 16)])
def test_swizzle_matches_offset_formula_and_round_trips(rows, kb):
    scales = torch.randint(1, 255, (rows, kb), dtype=torch.uint8)
    sw = F.swizzle_scales(scales)
    padded_rows, kc = F.round_up(rows, 128), F.round_up(kb, 4)
    assert tuple(sw.shape) == (padded_rows, kc) == F.scale_shape(rows, kb * 16, "swizzled_128x4")
    flat = sw.flatten()
    m = torch.arange(rows).view(-1, 1).expand(rows, kb)
    k = torch.arange(kb).view(1, -1).expand(rows, kb)
    offsets = F.swizzled_offset(m, k, kc)
    assert torch.equal(flat[offsets], scales)
    # every byte that is not a real scale is padding and must be zero
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[offsets.flatten()] = False
    assert int(flat[mask].count_nonzero()) == 0
    assert torch.equal(F.unswizzle_scales(sw, rows, kb), scales)


def test_swizzle_keeps_e4m3_dtype():
    s = torch.rand(3, 2).to(torch.float8_e4m3fn)
    sw = F.swizzle_scales(s)
    assert sw.dtype == torch.float8_e4m3fn
    back = F.unswizzle_scales(sw, 3, 2)
    assert torch.equal(back.view(torch.uint8), s.view(torch.uint8))


def test_swizzled_offset_known_values():
    # row 33 of tile 0 sits in row-group 1 of row 1: 1*16 + 1*4; column 5 is in column tile 1.
    assert F.swizzled_offset(33, 0, 8) == 20
    assert F.swizzled_offset(0, 5, 8) == 512 + 1
    assert F.swizzled_offset(128, 0, 8) == 2 * 512


def test_layout_parse_error_lists_valid_names():
    with pytest.raises(ValueError, match="linear, swizzled_128x4"):
        F.ScaleLayout.parse("8x4")


def test_unswizzle_rejects_wrong_size():
    with pytest.raises(ValueError, match="swizzled: 512 bytes"):
        F.unswizzle_scales(torch.zeros(128, 4, dtype=torch.uint8), 129, 4)
