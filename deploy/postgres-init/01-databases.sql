-- Run once by the postgres image on an empty volume: one database per environment, and
-- one for Dagster's own storage (never migrated by this project).
CREATE DATABASE dev;
CREATE DATABASE staging;
CREATE DATABASE prod;
CREATE DATABASE dagster;
