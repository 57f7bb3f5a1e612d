"""DICOMweb over the datastore, for OHIF: images and regions as DICOM series (``series``), the QIDO-RS,
WADO-RS and STOW-RS routes (``routes``), and DICOM SEGs read back as labels (``seg``)."""
