"""The review page and the journal of its changes (``imgclf review``)."""
