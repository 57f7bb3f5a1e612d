"""Candidate: mitochondria in any EM, one planar network trained across four microscopes (FIB-SEM, two ssTEM, SBEM).

Not served yet: trained on two CPU cores it does not beat the shipped FIB-SEM model (``mitochondria.py``) on
Lucchi++ or on ssTEM (``apps/axonseg/model/candidates/mitochondria-em.md``). Train it longer on a GPU
(``benchmarks/train_em_gpu.sh``) and promote it to ``SPECS`` when its leave-one-microscope-out figures beat the
shipped model's cross-microscope ones.
"""

from .spec import PLANAR_FILTERS, PLANAR_KERNELS, PLANAR_STRIDES, Augmentation, Recipe, StructureSpec, slabs

_LUCCHI = "lucchi_pp_train.h5"  # FIB-SEM, mouse CA1 hippocampus, 5 nm isotropic
_ISBI = "isbi2012_sstem.h5"  # ssTEM, Drosophila L1 VNC, 50x4x4 nm
_VNC = "drosophila_vnc_stack1_xlt512.h5"  # ssTEM, Drosophila L3 VNC, 50x4.6x4.6 nm (another animal and stack)
_HELA = "hela_sbem_mito.h5"  # serial block-face SEM, HeLa cells, 50x10x10 nm; only the central cell is labelled


# z-slabs of Lucchi++ (0-115-135-165, as before) and of HeLa's 5 sections (3 train, 1 select, 1 test); y-slabs of
# the ssTEM stacks, full depth (ISBI 0-320-384-512, VNC 0-640-768-1024, as the membrane model's).
_SPLITS = (
    slabs(_LUCCHI, "labels/mito", "fibsem-mouse-ca1", 0, (0, 115, 135, 165)),
    slabs(_ISBI, "labels/mito", "sstem-fly-l1-vnc", 1, (0, 320, 384, 512)),
    slabs(_VNC, "labels/mito", "sstem-fly-l3-vnc", 1, (0, 640, 768, 1024)),
    slabs(_HELA, "labels/mito", "sbem-hela", 0, (0, 3, 4, 5), mask="labels/mask"),
)

SPEC = StructureSpec(
    name="mitochondria",
    label_name="mitochondria",
    modality="electron microscopy (FIB-SEM, ssTEM, SBEM)",
    description="Mitochondria in EM of any section thickness (planar residual U-Net, 10 nm pixels)",
    label_map={0: 0, 1: 1},
    # Planar: no level convolves across z, so 5 nm FIB-SEM and 50 nm ssTEM sections are the same problem; images
    # are resampled in-plane to 10 nm (HeLa's pixel; mitochondria are 200-500 nm across).
    kernels=PLANAR_KERNELS,
    strides=PLANAR_STRIDES,
    filters=PLANAR_FILTERS,
    voxel_size_nm=(50.0, 10.0, 10.0),  # z nominal: planar models never resample z
    patch_size=(2, 256, 256),
    threshold=0.5,
    min_size=200,  # voxels on the 10 nm grid: a 160 nm disc in one section
    structure_metrics=("instances",),
    postprocessing="watershed",  # instances from the distance transform; same voxel F1 as a plain threshold
    recipe=Recipe(
        train=tuple(split[0] for split in _SPLITS),
        select=tuple(split[1] for split in _SPLITS),
        test=tuple(split[2] for split in _SPLITS),
        epochs=15,
        iterations_per_epoch=50,
        batch_size=2,
        learning_rate=2e-3,
        foreground_fraction=0.3,
        val_every=4,
        # Many microscopes: section defects (ssTEM), and blur, coarser pixels, inverted contrast, histogram shifts.
        augmentation=Augmentation(section_defects=True, domain_randomisation=True),
    ),
)
