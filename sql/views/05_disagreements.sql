-- analytics.disagreements: every disagreement on record, per workflow.
CREATE VIEW analytics.disagreements AS
SELECT r.dispatch_uuid,
       'final_report' AS source,
       NULL::text AS message_uuid,
       r.kind,
       r.detail,
       r.recorded_at
  FROM reconciliation r
UNION ALL
SELECT CASE WHEN c.subject = 'dispatch' THEN c.subject_id ELSE m.dispatch_uuid END,
       'callbacks',
       CASE WHEN c.subject = 'message' THEN c.subject_id END,
       c.kind,
       c.detail,
       c.recorded_at
  FROM discrepancy c
  LEFT JOIN message m ON c.subject = 'message' AND m.message_uuid = c.subject_id;

COMMENT ON VIEW analytics.disagreements IS 'Disagreements: the final report against the callbacks (as of now), and callbacks against each other (values that did not stand).';
COMMENT ON COLUMN analytics.disagreements.dispatch_uuid IS 'The workflow concerned (null for a message not yet linked to one).';
COMMENT ON COLUMN analytics.disagreements.source IS 'final_report: reconciliation of the final report; callbacks: callbacks that contradicted each other.';
COMMENT ON COLUMN analytics.disagreements.message_uuid IS 'The message concerned, for disagreements about one message.';
COMMENT ON COLUMN analytics.disagreements.kind IS 'status_mismatch, usage_mismatch, undecided_at_final_report, unexpected_message, status_contradiction, price_conflict, channel_conflict, dispatch_conflict, final_report_conflict, ...';
COMMENT ON COLUMN analytics.disagreements.detail IS 'What disagrees, and why, in words.';
COMMENT ON COLUMN analytics.disagreements.recorded_at IS 'When this service recorded it.';
