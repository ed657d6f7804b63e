"""The records store: everything transactional (registry, ledger, reports, audit...), behind engine-neutral seams."""
