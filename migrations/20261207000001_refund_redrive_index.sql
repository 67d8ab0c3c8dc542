-- The reconciler's pass over refunds reads only the refunds it may still re-drive, as its
-- pass over payments does (payments_redrivable_idx): refunds left flagged for an operator
-- are the oldest pending ones, and with refunds_pending_idx every pass read past all of
-- them before reaching one that is due.
CREATE INDEX refunds_redrivable_idx ON refunds (created_at)
    WHERE status = 'pending' AND attention_since IS NULL;
