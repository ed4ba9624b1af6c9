"""Line images: users' image + transcript manifests (``lines``), the embedded digit-line generator
(``digit_lines``), the HTR augmentation set (``augment``) and their data modules (``modules``)."""
