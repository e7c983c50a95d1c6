"""LesionLens service core: the durable job queue (:mod:`.jobs`), result outbox (:mod:`.outbox`),
signed model registry (:mod:`.registry`, :mod:`.signing`) and inference workers (:mod:`.worker`)
that the HTTP API and the DICOM listener drive."""
