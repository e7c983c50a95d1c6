"""Dataset format readers/writers (YOLO, COCO, LUNA16, studies JSON, DICOM + truth)."""
