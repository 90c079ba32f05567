-- Champion and challenger: the A/B arm that served each decision (docs/serving.md).
-- Decisions logged before this version were all served by the champion.
ALTER TABLE decisions ADD COLUMN arm TEXT NOT NULL DEFAULT 'champion';
CREATE INDEX decisions_arm ON decisions (arm);
