//! A real ORM's migrations through shardgate: Alembic (SQLAlchemy 2, psycopg2) upgrades a schema
//! over two shards, downgrades one step and upgrades again, then the application inserts and
//! reads through the ORM. Checked on each shard's primary: the same schema and version table on
//! both, the unsharded table's rows on both, each user on the shard its key hashes to.
//!
//! Needs `python3` with `sqlalchemy`, `alembic` and `psycopg2` (`.ci/run` installs them with pip).

use std::process::Command;

use shardgate::hash::KeyType;

use crate::harness::{Ctx, block_on, tests};
use crate::sharded::{ids_by_shard, rows, rows_landed, sharded};

tests![alembic_migrations_and_the_orm_run_unchanged];

const ENV_PY: &str = r#"
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
"#;

const REV_1: &str = r#"
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("name", sa.Text),
    )
    op.create_index("users_email", "users", ["email"])
    countries = op.create_table(
        "countries",
        sa.Column("code", sa.String(2), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.bulk_insert(countries, [{"code": "fr", "name": "France"}, {"code": "jp", "name": "Japan"}])

def downgrade():
    op.drop_table("countries")
    op.drop_index("users_email", "users")
    op.drop_table("users")
"#;

const REV_2: &str = r#"
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

def upgrade():
    op.add_column("users", sa.Column("country", sa.String(2), server_default="fr"))
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
    )

def downgrade():
    op.drop_table("orders")
    op.drop_column("users", "country")
"#;

/// Upgrades to head, downgrades to 0001, upgrades again; then the ORM writes and reads.
const APP_PY: &str = r#"
import sys
from alembic import command
from alembic.config import Config
from sqlalchemy import BigInteger, Integer, String, Text, create_engine, select, func
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

url, scripts = sys.argv[1], sys.argv[2]
cfg = Config()
cfg.set_main_option("script_location", scripts)
cfg.set_main_option("sqlalchemy.url", url)
command.upgrade(cfg, "head")
command.downgrade(cfg, "0001")
command.upgrade(cfg, "head")

class Base(DeclarativeBase):
    pass

class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(Text)
    country: Mapped[str] = mapped_column(String(2))

class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(Integer)

engine = create_engine(url)
with Session(engine) as s:
    s.add_all([User(id=i, email=f"u{i}@example.com", name=f"user {i}", country="jp") for i in range(1, 101)])
    s.commit()
with Session(engine) as s:
    for i in range(1, 101):
        s.add(Order(id=1000 + i, user_id=i, total=i * 10))
        s.commit()
with Session(engine) as s:
    u = s.get(User, 42)
    assert u is not None and u.email == "u42@example.com", u
    u.name = "renamed"
    s.commit()
with Session(engine) as s:
    assert s.get(User, 42).name == "renamed"
    totals = s.execute(select(Order.total).where(Order.user_id == 7)).scalars().all()
    assert totals == [70], totals
    per_shard = s.execute(select(func.count()).select_from(User)).scalars().all()
    assert sum(per_shard) == 100, per_shard
print("ok")
"#;

fn alembic_migrations_and_the_orm_run_unchanged(ctx: &Ctx) -> anyhow::Result<()> {
    block_on(async {
        let probe = Command::new("python3")
            .args(["-c", "import sqlalchemy, alembic, psycopg2"])
            .output()?;
        anyhow::ensure!(
            probe.status.success(),
            "python3 with sqlalchemy, alembic and psycopg2 is needed (python3 -m pip install sqlalchemy alembic psycopg2-binary; .ci/run does it): {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let s = sharded(ctx, 2).await?;
        // `users` is sharded by id; `orders` by user_id; `countries` is on every shard.
        let dir = tempfile::tempdir()?;
        let scripts = dir.path().join("migrations");
        std::fs::create_dir_all(scripts.join("versions"))?;
        std::fs::write(scripts.join("env.py"), ENV_PY)?;
        std::fs::write(scripts.join("versions/0001_users.py"), REV_1)?;
        std::fs::write(scripts.join("versions/0002_orders.py"), REV_2)?;
        let app = dir.path().join("app.py");
        std::fs::write(&app, APP_PY)?;
        let url = format!("postgresql+psycopg2://app:secret@{}/app", s.proxy.addr());
        let out = tokio::process::Command::new("python3")
            .arg(&app)
            .arg(&url)
            .arg(&scripts)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
            "the Alembic/SQLAlchemy run failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, p) in s.primaries.iter().enumerate() {
            let version = rows(p, "SELECT version_num FROM alembic_version").await?;
            assert_eq!(version, vec![vec![Some("0002".to_string())]], "shard {i}");
            let countries = rows(p, "SELECT code FROM countries ORDER BY code").await?;
            assert_eq!(
                countries.len(),
                2,
                "shard {i}: the seed rows are on every shard"
            );
            let column = rows(
                p,
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'country'",
            )
            .await?;
            assert_eq!(column.len(), 1, "shard {i}: the re-applied column");
        }
        let users = ids_by_shard(&s, "SELECT id FROM users").await?;
        rows_landed(&s, KeyType::Bigint, &users, 100);
        let orders = ids_by_shard(&s, "SELECT user_id FROM orders").await?;
        rows_landed(&s, KeyType::Bigint, &orders, 100);
        Ok(())
    })
}
