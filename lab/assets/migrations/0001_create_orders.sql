CREATE TABLE orders (id integer PRIMARY KEY, created_at timestamptz NOT NULL);
