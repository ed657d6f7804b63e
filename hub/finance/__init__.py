"""Finance: the fee catalogue, the append-only ledger, gapless receipt numbers, PromptPay and reconciliation."""
