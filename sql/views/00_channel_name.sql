-- analytics.channel_name: one name per channel across both APIs.
--
-- Each API's callbacks are stored with its own channel names. The views show
-- Dispatch's names, which analysts already query, and the Messages API's
-- where Dispatch has none: Messages' `viber_service` is Dispatch's
-- `viber_service_msg`; `rcs` is the Messages API's alone. This is the one
-- place the mapping is written (sql/README.md).
CREATE OR REPLACE FUNCTION analytics.channel_name(channel text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE channel WHEN 'viber_service' THEN 'viber_service_msg' ELSE channel END;

COMMENT ON FUNCTION analytics.channel_name(text) IS 'One channel name across Dispatch and the Messages API (viber_service -> viber_service_msg).';
