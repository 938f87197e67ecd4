"""SFT files arrive in batches: one file = one dynamic partition, keyed by the batch id."""

import dagster as dg

sft_batches = dg.DynamicPartitionsDefinition(name="sft_batches")
