"""axonseg: MONAI Label app library (configs, infers, trainers, transforms, datastore)."""
