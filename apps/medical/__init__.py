"""The medical example apps, one package per paper (see apps/medical/<name>/README.md); the real
MRI, plane geometry, subjects, Dice and the snnc study they share live in apps.medical.common."""
