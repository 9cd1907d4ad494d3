from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0009_patient_delivery')]

    initial = False

    operations = [
        ops.CreateModel(
            name='StoredFile',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('org_id', fields.CharField(max_length=32)),
                ('conversation_id', fields.CharField(max_length=32)),
                ('event_id', fields.CharField(null=True, max_length=32)),
                ('uploader_id', fields.CharField(max_length=32)),
                ('name', fields.CharField(max_length=255)),
                ('content_type', fields.CharField(max_length=100)),
                ('size', fields.BigIntField()),
                ('sha256', fields.CharField(db_index=True, max_length=64)),
                ('source', fields.CharField(default='upload', db_default='upload', max_length=16)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'files', 'app': 'models', 'indexes': [Index(fields=['conversation_id', 'event_id'])], 'pk_attr': 'id', 'table_description': 'A file shared in a conversation: its name and type as accepted, and the hash of'},
            bases=['Model'],
        ),
    ]
