-- 0015: a conflict between two reports of a message's `to` or `from` said the
-- other party's number and id ("also reported: unknown/-/447700900456"), and
-- the read API showed it. It now says only which fields that party had
-- (app/model/state.py, Party.describe); the details already recorded are said so
-- too. Two details that become one are kept once.
CREATE TEMP TABLE party_conflict_shape ON COMMIT DROP AS
SELECT d.id, d.subject, d.subject_id, d.kind,
       'also reported: a party of type ' || m[1]
       || ' with ' || CASE WHEN m[2] = '-' THEN 'no id' ELSE 'an id' END
       || ' and ' || CASE WHEN m[3] = '-' THEN 'no number' ELSE 'a number' END
       || ' (values not shown)' AS detail
  FROM discrepancy d,
       regexp_match(substr(d.detail, 16), '^([^/]*)/(.*)/([^/]*)$') AS m
 WHERE d.kind IN ('to_conflict', 'from_conflict')
   AND d.detail LIKE 'also reported: %'
   AND d.detail NOT LIKE '%(values not shown)'
   AND m IS NOT NULL;

DELETE FROM discrepancy
 WHERE id IN (SELECT id
                FROM (SELECT id, row_number() OVER (PARTITION BY subject, subject_id, kind, detail
                                                    ORDER BY id) AS n
                        FROM party_conflict_shape) ranked
               WHERE n > 1);

UPDATE discrepancy d
   SET detail = s.detail
  FROM party_conflict_shape s
 WHERE d.id = s.id;
