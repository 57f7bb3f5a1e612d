"""Candidate: cell membranes in any EM, one planar network trained on ssTEM and FIB-SEM boundaries together.

Not served yet: trained on two CPU cores it does not beat the shipped ssTEM model (``membrane.py``) on the ssTEM
select slabs (``apps/axonseg/model/candidates/membrane-em.md``). Train it longer on a GPU
(``benchmarks/train_em_gpu.sh``) and promote it to ``SPECS`` when it beats the shipped model there and on FIB-SEM.
"""

from .spec import PLANAR_FILTERS, PLANAR_KERNELS, PLANAR_STRIDES, Augmentation, Recipe, StructureSpec, slabs

_VNC = "drosophila_vnc_stack1_xlt512.h5"  # ssTEM, Drosophila L3 VNC, 50x4.6x4.6 nm
_CARDONA = "trakem2_sstem_cardona.h5"  # ssTEM, Drosophila L1 VNC, 50x4x4 nm (the ISBI 2012 sections, TrakEM2 labels)
_GALA = "gala_fibsem_train.h5"  # FIB-SEM, Drosophila, ~10 nm isotropic (the file states no voxel size)


# y-slabs of the ssTEM stacks, full depth (VNC 0-640-768-1024, Cardona 0-320-384-512); x-slabs of gala (0-70-100-200:
# x 100-200 is also the tracing benchmark's test half, so no membrane run ever trains or selects on it).
_SPLITS = (
    slabs(_VNC, "labels/membrane", "sstem-fly-l3-vnc", 1, (0, 640, 768, 1024)),
    slabs(_CARDONA, "labels/membrane", "sstem-fly-l1-vnc", 1, (0, 320, 384, 512)),
    slabs(_GALA, "labels/boundary", "fibsem-fly", 2, (0, 70, 100, 200), voxel_size_nm=(10.0, 10.0, 10.0)),
)

SPEC = StructureSpec(
    name="membrane",
    label_name="membrane",
    modality="electron microscopy (ssTEM, FIB-SEM)",
    description="Cell membranes in EM of any section thickness (planar residual U-Net, 4.6 nm pixels)",
    label_map={0: 0, 1: 1},
    # Planar: sections are segmented one by one, so 50 nm ssTEM and 10 nm FIB-SEM are the same problem; images
    # are resampled in-plane to the ssTEM pixel (membranes are a few pixels wide there).
    kernels=PLANAR_KERNELS,
    strides=PLANAR_STRIDES,
    filters=PLANAR_FILTERS,
    voxel_size_nm=(50.0, 4.6, 4.6),  # z nominal: planar models never resample z
    patch_size=(2, 256, 256),
    threshold=0.4,
    recipe=Recipe(
        train=tuple(split[0] for split in _SPLITS),
        select=tuple(split[1] for split in _SPLITS),
        test=tuple(split[2] for split in _SPLITS),
        epochs=12,
        iterations_per_epoch=50,
        batch_size=2,
        learning_rate=2e-3,
        foreground_fraction=0.3,
        val_every=3,
        augmentation=Augmentation(section_defects=True, domain_randomisation=True),
    ),
)
