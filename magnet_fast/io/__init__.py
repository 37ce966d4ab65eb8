"""Files and formats: atomic writes and safe loading (``files``), audio in and out, the EnCodec codec, the
hub cache and the offline checkpoint converter (``convert``). Imports only errors, params and config."""
